// AwsProvider: cells as EC2 instances. One instance per cell, launched with the cell image,
// tagged so this controller can always find what it owns, with IMDSv2 required, an encrypted
// root volume that dies with the instance, and user data that carries only the bootstrap.
//
// Idempotency: a launch first looks for a live instance tagged with the cell ID, and passes a
// ClientToken derived from the cell ID, so a controller killed mid-launch and restarted gets
// the instance it already asked for instead of a second one. (moto does not implement
// ClientToken; the tag lookup is what its tests exercise.)
import { createHash } from 'node:crypto';
import {
  DescribeAccountAttributesCommand,
  DescribeInstanceAttributeCommand,
  DescribeInstancesCommand,
  DescribeSubnetsCommand,
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type EC2ClientConfig,
  type Filter,
  type Instance,
  type RunInstancesCommandInput,
  type Tag,
} from '@aws-sdk/client-ec2';
import { pino, type Logger } from 'pino';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';
import { Counter, Histogram, Registry } from 'prom-client';
import { CapacityError } from '../provider.js';
import { errorCode, isCapacityError, isSpotCapacityError, UnavailablePairs } from './capacity.js';
import { AwsCatalog, loadPrices } from './catalog.js';
import { ANNOTATIONS, parseAwsProviderConfig, TAGS, type AwsProviderConfig } from './config.js';
import { ImageResolver } from './image.js';
import { instanceProfileRefusal } from './instance-profiles.js';
import { ensureCellSecurityGroup } from './security-group.js';
import { decodeUserData, encodeUserData } from './user-data.js';
import type { CellBootstrapData, CellProvider, InstanceInfo, InstanceType, LaunchedInstance, LaunchRequest, ProviderCapacity } from '../provider.js';

export const AGENT_PORT_TAG = TAGS.agentPort;

export interface AwsProviderOptions {
  config: AwsProviderConfig;
  /** Tags the managed security group; instances take theirs from LaunchRequest.bootstrap. */
  controllerId: string;
  logger?: Logger;
  /** Metrics land here (the controller's registry); a private registry when absent. */
  registry?: Registry;
  /** Extra AWS SDK client configuration (credentials for tests, a custom request handler, ...). */
  clientConfig?: Partial<EC2ClientConfig>;
  /**
   * TEST ONLY. Where the controller reaches an instance's agent, when that instance's boot is
   * played by a local agent on loopback (the EC2 emulator's addresses are invented and must
   * never be contacted). Production leaves this unset: the address is the instance's IP.
   */
  testAgentAddressMap?: (instanceId: string) => string | undefined;
}

const ARCH_TTL_MS = 60_000;
const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped', 'shutting-down'];
const DESCRIBE_CHUNK = 200; // values per filter
const TERMINATE_CHUNK = 1000;
/** How long describe waits to gather concurrent callers into one DescribeInstances. */
const DESCRIBE_WINDOW_MS = 10;

function tagsOf(i: Instance): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of i.Tags ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? '';
  return out;
}

function chunks<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

/** ClientToken: ≤ 64 ASCII characters, stable for (cell, subnet, market). */
export function clientToken(cellId: string, subnet: string, spot: boolean): string {
  const h = createHash('sha256')
    .update(`${cellId}/${subnet}/${spot ? 'spot' : 'on-demand'}`)
    .digest('hex')
    .slice(0, 16);
  return `${cellId.slice(0, 46)}-${h}`;
}

export class AwsProvider implements CellProvider {
  readonly name = 'aws';
  /** Cells get their certificate through the bootstrap (src/bootstrap), never in user data. */
  readonly needsBootstrap = true;
  readonly launchAnnotations = [ANNOTATIONS.instanceProfile, ANNOTATIONS.rootVolumeGiB] as const;
  /** The SDK client, exposed so operators' tools and tests can add middleware. */
  readonly ec2: EC2Client;
  readonly registry: Registry;
  private readonly cfg: AwsProviderConfig;
  private readonly log: Logger;
  private readonly catalog: AwsCatalog;
  private readonly images: ImageResolver;
  private readonly unavailable: UnavailablePairs;
  /** What architectures() found, kept a minute: every scheduling asks, and a missing arm64 image would cost a DescribeImages each time. */
  private archs: { at: number; value: Promise<Array<InstanceType['arch']>> } | undefined;
  private subnetZones: Promise<Map<string, string>> | undefined;
  private readonly cellGroups = new Map<number, Promise<string>>();
  private readonly m: {
    launches: Counter<'outcome' | 'market'>;
    capacity: Counter<'instance_type' | 'zone' | 'market'>;
    apiErrors: Counter<'operation' | 'code'>;
    launchSeconds: Histogram<'outcome'>;
  };

  constructor(private readonly opts: AwsProviderOptions) {
    this.cfg = opts.config;
    this.log = opts.logger ?? pino({ name: 'aws-provider', redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR } });
    this.ec2 = new EC2Client({
      ...(this.cfg.region ? { region: this.cfg.region } : {}),
      ...(this.cfg.endpoint ? { endpoint: this.cfg.endpoint } : {}),
      ...(this.cfg.profile ? { profile: this.cfg.profile } : {}),
      // EC2 throttles per account and action; adaptive retry backs off and rate-limits itself.
      maxAttempts: this.cfg.maxAttempts,
      retryMode: 'adaptive',
      ...opts.clientConfig,
    });
    this.registry = opts.registry ?? new Registry();
    const reg = [this.registry];
    this.m = {
      launches: new Counter({ name: 'cello_aws_launches_total', help: 'RunInstances outcomes per cell launch', labelNames: ['outcome', 'market'], registers: reg }),
      capacity: new Counter({
        name: 'cello_aws_capacity_errors_total',
        help: 'Capacity refusals by instance type and zone',
        labelNames: ['instance_type', 'zone', 'market'],
        registers: reg,
      }),
      apiErrors: new Counter({ name: 'cello_aws_api_errors_total', help: 'EC2 API errors after retries', labelNames: ['operation', 'code'], registers: reg }),
      launchSeconds: new Histogram({
        name: 'cello_aws_launch_seconds',
        help: 'Time for launch() to get an instance ID',
        labelNames: ['outcome'],
        buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
        registers: reg,
      }),
    };
    const prices = loadPrices(this.cfg.pricesFile);
    this.catalog = new AwsCatalog(this.ec2, {
      live: this.cfg.liveCatalog,
      prices,
      ...(this.cfg.instanceTypes ? { allow: this.cfg.instanceTypes } : {}),
      onLiveError: (err) => this.log.warn({ err }, 'DescribeInstanceTypes failed; using the bundled snapshot'),
    });
    this.images = new ImageResolver(this.ec2, this.cfg.image);
    this.unavailable = new UnavailablePairs(this.cfg.capacityBackoffSeconds * 1000);
  }

  async instanceTypes(): Promise<InstanceType[]> {
    return this.catalog.types();
  }

  /** Architectures of the catalog the cell image resolves for (image.id: its one; a name filter: those with a match). */
  architectures(): Promise<Array<InstanceType['arch']>> {
    const now = Date.now();
    if (!this.archs || now - this.archs.at > ARCH_TTL_MS) {
      const value = this.catalog.types().then(async (types) => {
        const archs = [...new Set(types.map((t) => t.arch))].sort();
        const ok = await Promise.all(
          archs.map((a) =>
            this.images.resolve(a).then(
              () => true,
              () => false,
            ),
          ),
        );
        return archs.filter((_, i) => ok[i]);
      });
      this.archs = { at: now, value };
      value.catch(() => (this.archs = undefined));
    }
    return this.archs.value;
  }

  refusePod(pod: { namespace: string; annotations: Record<string, string> }): string | undefined {
    return instanceProfileRefusal(this.cfg, pod.namespace, pod.annotations);
  }

  /** Where the catalog's specs came from this time: DescribeInstanceTypes or the snapshot. */
  async catalogOrigin(): Promise<'live' | 'snapshot'> {
    return (await this.catalog.specs()).origin;
  }

  private async send<T>(operation: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      this.m.apiErrors.inc({ operation, code: errorCode(err) ?? 'unknown' });
      throw err;
    }
  }

  private zones(): Promise<Map<string, string>> {
    this.subnetZones ??= this.send('DescribeSubnets', () => this.ec2.send(new DescribeSubnetsCommand({ SubnetIds: this.cfg.subnets })))
      .then((r) => {
        const m = new Map<string, string>();
        for (const s of r.Subnets ?? []) if (s.SubnetId && s.AvailabilityZone) m.set(s.SubnetId, s.AvailabilityZone);
        for (const id of this.cfg.subnets) {
          if (!m.has(id)) throw new Error(`providers.aws.subnets: subnet ${id} not found`);
        }
        return m;
      })
      .catch((err) => {
        this.subnetZones = undefined;
        throw err;
      });
    return this.subnetZones;
  }

  private securityGroups(controllerId: string, agentPort: number): Promise<string[]> {
    const extra = this.cfg.securityGroupIds;
    const sg = this.cfg.cellSecurityGroup;
    if (!sg) return Promise.resolve(extra);
    let g = this.cellGroups.get(agentPort);
    if (!g) {
      g = ensureCellSecurityGroup(this.ec2, sg, agentPort, controllerId);
      this.cellGroups.set(agentPort, g);
      g.catch(() => this.cellGroups.delete(agentPort));
    }
    return g.then((id) => [id, ...extra.filter((x) => x !== id)]);
  }

  /** The live instance already launched for this cell, if any (idempotency across restarts). */
  async findCellInstance(cellId: string): Promise<Instance | undefined> {
    const found = await this.describeRaw([
      { Name: `tag:${TAGS.cellId}`, Values: [cellId] },
      { Name: 'instance-state-name', Values: LIVE_STATES },
    ]);
    // Oldest first: if a duplicate ever exists, the first one is the cell's.
    return found.sort((a, b) => (a.LaunchTime?.getTime() ?? 0) - (b.LaunchTime?.getTime() ?? 0))[0];
  }

  async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    const started = process.hrtime.bigint();
    const observe = (outcome: string) => this.m.launchSeconds.observe({ outcome }, Number(process.hrtime.bigint() - started) / 1e9);
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(req.cellId)) throw new Error(`launch: cellId: "${req.cellId}" must be 1-64 of [A-Za-z0-9._-]`);
    const b = req.bootstrap;
    if (b.cellId !== req.cellId) throw new Error(`launch: bootstrap.cellId ${b.cellId} differs from cellId ${req.cellId}`);
    // A cell launched without these could never be bootstrapped: fail now, not at boot timeout.
    if (!b.caCertPem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('launch: bootstrap.caCertPem: the controller CA certificate (PEM) is required');
    if (b.token.length < 16) throw new Error('launch: bootstrap.token: a one-time token of at least 16 characters is required');
    const existing = await this.findCellInstance(req.cellId);
    if (existing?.InstanceId) {
      this.log.info({ cellId: req.cellId, instanceId: existing.InstanceId }, 'cell already has an instance; not launching another');
      this.m.launches.inc({ outcome: 'existing', market: existing.InstanceLifecycle === 'spot' ? 'spot' : 'on-demand' });
      observe('existing');
      return {
        instanceId: existing.InstanceId,
        spot: existing.InstanceLifecycle === 'spot',
        ...(existing.Placement?.AvailabilityZone ? { zone: existing.Placement.AvailabilityZone } : {}),
      };
    }

    const opt = req.options ?? {};
    // Checked here too, whoever calls launch: the pod's namespace is in its tag.
    const podTag = req.tags[TAGS.pod];
    const refusal = instanceProfileRefusal(this.cfg, podTag?.includes('/') ? podTag.slice(0, podTag.indexOf('/')) : undefined, opt);
    if (refusal) throw new Error(`launch: ${refusal}`);
    const spotAnn = opt[ANNOTATIONS.spot];
    // The pod annotation's values are the selection's: true/preferred/required mean spot.
    const spot = spotAnn !== undefined ? ['true', 'preferred', 'required'].includes(spotAnn.toLowerCase()) : req.spot || this.cfg.spot.default;
    const spec = await this.catalog.spec(req.instanceType);
    if (!spec) throw new CapacityError(`instance type ${req.instanceType} is not offered in this region`, req.instanceType);
    const rootGiB = opt[ANNOTATIONS.rootVolumeGiB] !== undefined ? Number(opt[ANNOTATIONS.rootVolumeGiB]) : this.cfg.rootVolume.sizeGiB;
    if (!Number.isInteger(rootGiB) || rootGiB < 4 || rootGiB > 16384) {
      throw new Error(`launch: annotation ${ANNOTATIONS.rootVolumeGiB}: "${opt[ANNOTATIONS.rootVolumeGiB]}" must be an integer from 4 to 16384`);
    }
    const profile = opt[ANNOTATIONS.instanceProfile] ?? this.cfg.instanceProfile;

    const [image, zones, groups] = await Promise.all([this.images.resolve(spec.arch), this.zones(), this.securityGroups(b.controllerId, b.agentPort)]);
    // In instance-profile mode the cell asks ECR for its own token, with the role it runs as.
    const ecrOwn = this.cfg.ecr.mode === 'instance-profile' ? { ecrCredentials: 'instance-profile' } : undefined;
    const userData = encodeUserData(ecrOwn ? { ...b, agentConfig: { ...b.agentConfig, ...ecrOwn } } : b).toString('base64');

    const tags: Tag[] = Object.entries({
      ...this.cfg.extraTags,
      ...req.tags,
      Name: `cello-${req.cellId}`,
      [TAGS.controllerId]: b.controllerId,
      [TAGS.cellId]: req.cellId,
      [AGENT_PORT_TAG]: String(b.agentPort),
    }).map(([Key, Value]) => ({ Key, Value }));

    // Spot in every zone first; then, if allowed, on-demand in every zone.
    const markets = spot ? (this.cfg.spot.fallbackToOnDemand ? [true, false] : [true]) : [false];
    const attempts: Array<{ subnet: string; zone: string; spot: boolean }> = [];
    for (const s of markets) for (const subnet of this.cfg.subnets) attempts.push({ subnet, zone: zones.get(subnet)!, spot: s });

    let lastErr: unknown;
    for (const a of attempts) {
      if (this.unavailable.isUnavailable(req.instanceType, a.zone, a.spot)) continue;
      const input: RunInstancesCommandInput = {
        ImageId: image.imageId,
        InstanceType: req.instanceType as RunInstancesCommandInput['InstanceType'],
        MinCount: 1,
        MaxCount: 1,
        ClientToken: clientToken(req.cellId, a.subnet, a.spot),
        SubnetId: a.subnet,
        SecurityGroupIds: groups,
        UserData: userData,
        // A cell that shuts itself down must not linger as a stopped, billed volume.
        InstanceInitiatedShutdownBehavior: 'terminate',
        MetadataOptions: {
          HttpTokens: 'required',
          HttpEndpoint: 'enabled',
          HttpPutResponseHopLimit: this.cfg.metadataHopLimit,
          InstanceMetadataTags: 'disabled',
        },
        BlockDeviceMappings: [
          {
            DeviceName: image.rootDeviceName,
            Ebs: {
              VolumeSize: rootGiB,
              VolumeType: this.cfg.rootVolume.type,
              Encrypted: true,
              DeleteOnTermination: true,
              ...(this.cfg.rootVolume.kmsKeyId ? { KmsKeyId: this.cfg.rootVolume.kmsKeyId } : {}),
            },
          },
        ],
        TagSpecifications: [
          { ResourceType: 'instance', Tags: tags },
          { ResourceType: 'volume', Tags: tags },
        ],
        ...(profile ? { IamInstanceProfile: profile.startsWith('arn:') ? { Arn: profile } : { Name: profile } } : {}),
        ...(a.spot
          ? {
              InstanceMarketOptions: {
                MarketType: 'spot',
                SpotOptions: { SpotInstanceType: 'one-time', InstanceInterruptionBehavior: 'terminate' },
              },
            }
          : {}),
      };
      try {
        const r = await this.send('RunInstances', () => this.ec2.send(new RunInstancesCommand(input)));
        const inst = r.Instances?.[0];
        if (!inst?.InstanceId) throw new Error('RunInstances returned no instance');
        const market = a.spot ? 'spot' : 'on-demand';
        this.m.launches.inc({ outcome: 'launched', market });
        observe('launched');
        this.log.info({ cellId: req.cellId, instanceId: inst.InstanceId, instanceType: req.instanceType, zone: a.zone, market, imageId: image.imageId }, 'launched cell instance');
        return { instanceId: inst.InstanceId, zone: a.zone, spot: a.spot };
      } catch (err) {
        if (isCapacityError(err) || (a.spot && isSpotCapacityError(err))) {
          const market = a.spot ? 'spot' : 'on-demand';
          this.unavailable.mark(req.instanceType, a.zone, a.spot);
          this.m.capacity.inc({ instance_type: req.instanceType, zone: a.zone, market });
          this.log.warn({ cellId: req.cellId, instanceType: req.instanceType, zone: a.zone, market, code: errorCode(err) }, 'no capacity; trying the next zone');
          lastErr = err;
          continue;
        }
        this.m.launches.inc({ outcome: 'error', market: a.spot ? 'spot' : 'on-demand' });
        observe('error');
        throw err;
      }
    }
    this.m.launches.inc({ outcome: 'no-capacity', market: spot ? 'spot' : 'on-demand' });
    observe('no-capacity');
    const why = lastErr ? `${errorCode(lastErr)}: ${(lastErr as Error).message}` : 'every zone is marked unavailable for this type';
    throw new CapacityError(`no capacity for ${req.instanceType} in ${[...new Set(attempts.map((a) => a.zone))].join(', ')} (${why})`, req.instanceType);
  }

  private async describeRaw(filters: Filter[]): Promise<Instance[]> {
    const out: Instance[] = [];
    let token: string | undefined;
    do {
      const r = await this.send('DescribeInstances', () => this.ec2.send(new DescribeInstancesCommand({ Filters: filters, MaxResults: 1000, NextToken: token })));
      for (const res of r.Reservations ?? []) out.push(...(res.Instances ?? []));
      token = r.NextToken;
    } while (token);
    return out;
  }

  private info(i: Instance): InstanceInfo {
    const tags = tagsOf(i);
    const port = Number(tags[AGENT_PORT_TAG] ?? 0);
    const ip = this.cfg.addressType === 'public' ? i.PublicIpAddress : i.PrivateIpAddress;
    // With the test map set it is the only source: an instance the harness has not booted yet
    // has no address, so nothing is ever sent to the addresses an emulator invents.
    const agentAddress = this.opts.testAgentAddressMap ? this.opts.testAgentAddressMap(i.InstanceId!) : ip && port ? `${ip}:${port}` : undefined;
    const state = (i.State?.Name ?? 'unknown') as InstanceInfo['state'];
    return {
      instanceId: i.InstanceId!,
      state: LIVE_STATES.includes(state) || state === 'terminated' ? state : 'unknown',
      ...(agentAddress ? { agentAddress } : {}),
      tags,
      instanceType: i.InstanceType ?? '',
      ...(i.LaunchTime ? { launchedAt: i.LaunchTime } : {}),
      spot: i.InstanceLifecycle === 'spot',
      ...(i.Placement?.AvailabilityZone ? { zone: i.Placement.AvailabilityZone } : {}),
    };
  }

  /**
   * Batched: one DescribeInstances per 200 IDs (an ID filter, so unknown IDs are simply
   * absent). Calls that arrive within the same short window — the reconciler asking about each
   * booting cell on a tick — are coalesced into one request, so EC2 sees one call per window,
   * not one per cell.
   */
  async describe(instanceIds: string[]): Promise<InstanceInfo[]> {
    const ids = [...new Set(instanceIds)];
    if (ids.length === 0) return [];
    const batch = (this.pendingDescribe ??= this.newDescribeBatch());
    for (const id of ids) batch.ids.add(id);
    const all = await batch.result;
    return ids.map((id) => all.get(id)).filter((x): x is InstanceInfo => x !== undefined);
  }

  private pendingDescribe: { ids: Set<string>; result: Promise<Map<string, InstanceInfo>> } | undefined;

  private newDescribeBatch(): { ids: Set<string>; result: Promise<Map<string, InstanceInfo>> } {
    const ids = new Set<string>();
    const result = new Promise<Map<string, InstanceInfo>>((resolve, reject) => {
      setTimeout(() => {
        this.pendingDescribe = undefined; // later callers start the next batch
        (async () => {
          const out = new Map<string, InstanceInfo>();
          for (const c of chunks([...ids], DESCRIBE_CHUNK)) {
            for (const i of await this.describeRaw([{ Name: 'instance-id', Values: c }])) out.set(i.InstanceId!, this.info(i));
          }
          return out;
        })().then(resolve, reject);
      }, DESCRIBE_WINDOW_MS);
    });
    return { ids, result };
  }

  /**
   * The account's instance limit in this region (DescribeAccountAttributes max-instances) and
   * every running or starting instance in it, whoever launched it: all count against the limit.
   * (The vCPU quota lives in the Service Quotas API, which this provider does not call yet: no
   * vCPU limit is reported.)
   */
  async capacity(): Promise<ProviderCapacity> {
    // No AttributeNames: the SDK's enum no longer lists max-instances, the API still answers it.
    const attrs = await this.send('DescribeAccountAttributes', () => this.ec2.send(new DescribeAccountAttributesCommand({})));
    const raw = attrs.AccountAttributes?.find((a) => a.AttributeName === 'max-instances')?.AttributeValues?.[0]?.AttributeValue;
    const limit = Number(raw);
    if (raw === undefined || !Number.isFinite(limit) || limit < 0) throw new Error(`DescribeAccountAttributes: max-instances is ${JSON.stringify(raw)}, not a number`);
    const running = await this.describeRaw([{ Name: 'instance-state-name', Values: ['pending', 'running'] }]);
    return { instances: { limit, used: running.length }, source: 'ec2:DescribeAccountAttributes' };
  }

  async listOwned(controllerId: string): Promise<InstanceInfo[]> {
    const found = await this.describeRaw([
      { Name: `tag:${TAGS.controllerId}`, Values: [controllerId] },
      { Name: 'instance-state-name', Values: LIVE_STATES },
    ]);
    return found.map((i) => this.info(i));
  }

  async terminate(instanceIds: string[]): Promise<void> {
    const ids = [...new Set(instanceIds)];
    for (const c of chunks(ids, TERMINATE_CHUNK)) {
      try {
        await this.send('TerminateInstances', () => this.ec2.send(new TerminateInstancesCommand({ InstanceIds: c })));
      } catch (err) {
        // One unknown ID fails the whole call: end the others one by one; gone is gone.
        if (!String(errorCode(err)).startsWith('InvalidInstanceID')) throw err;
        for (const id of c) {
          try {
            await this.ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
          } catch (e) {
            if (!String(errorCode(e)).startsWith('InvalidInstanceID')) throw e;
          }
        }
      }
      this.log.info({ instanceIds: c }, 'terminated cell instances');
    }
  }

  /** The bootstrap an instance was launched with, read back from EC2 (recovery, tests). */
  async userData(instanceId: string): Promise<CellBootstrapData> {
    const r = await this.send('DescribeInstanceAttribute', () => this.ec2.send(new DescribeInstanceAttributeCommand({ InstanceId: instanceId, Attribute: 'userData' })));
    const v = r.UserData?.Value;
    if (!v) throw new Error(`instance ${instanceId} has no user data`);
    return decodeUserData(Buffer.from(v, 'base64'));
  }

  async close(): Promise<void> {
    this.ec2.destroy();
  }
}

/**
 * The provider for the controller's `provider: {kind: aws, ...}` configuration section (every
 * other key is the aws provider's, validated here with errors naming `provider.<field>`).
 */
export function awsProviderFromConfig(section: Record<string, unknown>, o: Omit<AwsProviderOptions, 'config'>): AwsProvider {
  const { kind: _kind, ...rest } = section;
  return new AwsProvider({ ...o, config: parseAwsProviderConfig(rest, 'provider') });
}
