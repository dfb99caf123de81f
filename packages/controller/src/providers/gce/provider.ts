// GceProvider: cells as Compute Engine VMs. One instance per cell, launched from the cell image
// with Shielded VM on, no external IP unless configured, labels that let this controller find
// what it owns after any store loss, a network tag that the managed firewall rule admits the
// controller through, and instance metadata that carries only the bootstrap (the same
// cell-bootstrap/v1 one-time-token document as EC2 user data, in the "user-data" attribute).
//
// Instance IDs are `zone/name`: GCE names instances per zone and every call needs the zone.
// Idempotency: a launch first looks for a live instance labelled with the cell ID, names the
// instance after the cell (a second insert in that zone is refused as alreadyExists) and
// passes a requestId derived from cell, zone and model, so a retried insert is not a second VM.
import { createHash } from 'node:crypto';
import { FirewallsClient, GlobalOperationsClient, InstancesClient, MachineTypesClient, RegionsClient, ZoneOperationsClient, type protos } from '@google-cloud/compute';
import { pino, type Logger } from 'pino';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';
import { Counter, Registry } from 'prom-client';
import { UnavailablePairs } from '../aws/capacity.js';
import { encodeUserData } from '../aws/user-data.js';
import { CapacityError, type CellProvider, type InstanceInfo, type InstanceType, type LaunchedInstance, type LaunchRequest, type ProviderCapacity } from '../provider.js';
import { GceCatalog, listMachineTypes, loadGcePrices } from './catalog.js';
import { ANNOTATIONS, LABELS, METADATA_KEYS, parseGceProviderConfig, regionOf, type GceProviderConfig } from './config.js';
import { ensureAgentFirewall, ensureCellTrafficFirewall, pruneAgentFirewalls } from './firewall.js';
import { serviceAccountRefusal } from './service-accounts.js';
import { CAPACITY_CODES, httpStatus, syncCapacityCode, OperationError, waitOperation } from './operations.js';

type Instance = protos.google.cloud.compute.v1.IInstance;
/** google-gax's client options, as the compute clients take them. */
type ClientOptions = NonNullable<ConstructorParameters<typeof InstancesClient>[0]>;

const TAG_CONTROLLER = 'cello.io/controller-id';
const TAG_CELL = 'cello.io/cell-id';
const TAG_POD = 'cello.io/pod';

export interface GceProviderOptions {
  config: GceProviderConfig;
  controllerId: string;
  logger?: Logger;
  registry?: Registry;
  /**
   * Extra options for every @google-cloud/compute client (an auth client of its own, ...).
   * Production leaves this unset: Application Default Credentials.
   */
  clientOptions?: ClientOptions;
  /**
   * TEST ONLY. Where the controller reaches an instance's agent, when that instance's boot is
   * played by a local agent on loopback (the fake's addresses are invented and must never be
   * contacted). Production leaves this unset: the address is the instance's IP.
   */
  testAgentAddressMap?: (instanceId: string) => string | undefined;
}

/** GCE label values: lowercase [a-z0-9_-], at most 63. Lossy: exact values live in the cello-tags metadata item. */
export function labelValue(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, '_')
    .slice(0, 63);
}

/** The instance name of a cell: a GCE resource name (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`). */
export function instanceName(cellId: string): string {
  const n = `cello-${cellId.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`.slice(0, 63);
  return n.replace(/-+$/, '') || 'cello-cell';
}

/** A requestId (a UUID, GCE's idempotency key for 60 minutes), stable for (cell, zone, model). */
export function requestId(cellId: string, zone: string, spot: boolean): string {
  const h = createHash('sha256')
    .update(`${cellId}/${zone}/${spot ? 'spot' : 'standard'}`)
    .digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function parseId(id: string): { zone: string; name: string } | undefined {
  const m = /^([a-z]+-[a-z]+\d+-[a-z])\/([a-z]([-a-z0-9]{0,61}[a-z0-9])?)$/.exec(id);
  return m ? { zone: m[1]!, name: m[2]! } : undefined;
}

const lastPart = (url: string | null | undefined): string => (url ? url.slice(url.lastIndexOf('/') + 1) : '');

/** The network or subnetwork as a partial URL GCE accepts. */
function resourceUrl(value: string, project: string, kind: 'networks' | 'subnetworks', region: string): string {
  if (value.includes('/')) return value;
  return kind === 'networks' ? `projects/${project}/global/networks/${value}` : `projects/${project}/regions/${region}/subnetworks/${value}`;
}

const CONCURRENCY = 16;
async function eachLimited<T>(xs: T[], f: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: Math.min(CONCURRENCY, xs.length) }, async () => {
      while (i < xs.length) await f(xs[i++]!);
    }),
  );
}

export class GceProvider implements CellProvider {
  readonly name = 'gce';
  readonly needsBootstrap = true;
  readonly launchAnnotations = [ANNOTATIONS.bootDiskGb, ANNOTATIONS.serviceAccount] as const;
  readonly registry: Registry;
  private readonly cfg: GceProviderConfig;
  private readonly region: string;
  private readonly log: Logger;
  private readonly instances: InstancesClient;
  private readonly zoneOps: ZoneOperationsClient;
  private readonly globalOps: GlobalOperationsClient;
  private readonly machineTypes: MachineTypesClient;
  private readonly regions: RegionsClient;
  private readonly firewalls: FirewallsClient;
  private readonly catalog: GceCatalog;
  private readonly unavailable: UnavailablePairs;
  private readonly firewallRules = new Map<number, Promise<string | undefined>>();
  private readonly m: { launches: Counter<'outcome' | 'model'>; capacity: Counter<'machine_type' | 'zone' | 'model' | 'code'> };

  constructor(private readonly opts: GceProviderOptions) {
    this.cfg = opts.config;
    this.region = regionOf(this.cfg);
    this.log = opts.logger ?? pino({ name: 'gce-provider', redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR } });
    const clientOpts: ClientOptions = { fallback: true, projectId: this.cfg.project, ...this.endpointOptions(), ...opts.clientOptions };
    this.instances = new InstancesClient(clientOpts);
    this.zoneOps = new ZoneOperationsClient(clientOpts);
    this.globalOps = new GlobalOperationsClient(clientOpts);
    this.machineTypes = new MachineTypesClient(clientOpts);
    this.regions = new RegionsClient(clientOpts);
    this.firewalls = new FirewallsClient(clientOpts);
    this.registry = opts.registry ?? new Registry();
    const reg = [this.registry];
    this.m = {
      launches: new Counter({ name: 'cello_gce_launches_total', help: 'instances.insert outcomes per cell launch', labelNames: ['outcome', 'model'], registers: reg }),
      capacity: new Counter({
        name: 'cello_gce_capacity_errors_total',
        help: 'Capacity and quota refusals by machine type and zone',
        labelNames: ['machine_type', 'zone', 'model', 'code'],
        registers: reg,
      }),
    };
    this.catalog = new GceCatalog({
      live: this.cfg.liveCatalog,
      prices: loadGcePrices(this.cfg.pricesFile),
      ...(this.cfg.machineTypes ? { allow: this.cfg.machineTypes } : {}),
      ...(this.cfg.customMachineTypes ? { custom: this.cfg.customMachineTypes } : {}),
      read: () => listMachineTypes(this.machineTypes, this.cfg.project, this.cfg.zones, this.cfg.operationTimeoutSeconds * 1000),
      onLiveError: (err) => this.log.warn({ err }, 'machineTypes.aggregatedList failed; using the bundled snapshot'),
    });
    this.unavailable = new UnavailablePairs(this.cfg.capacityBackoffSeconds * 1000);
  }

  private endpointOptions(): ClientOptions {
    if (!this.cfg.endpoint) return {};
    const u = new URL(this.cfg.endpoint);
    const protocol = u.protocol.replace(':', '');
    return { apiEndpoint: u.hostname, port: Number(u.port || (protocol === 'http' ? 80 : 443)), protocol };
  }

  refusePod(pod: { namespace: string; annotations: Record<string, string> }): string | undefined {
    return serviceAccountRefusal(this.cfg, pod.namespace, pod.annotations);
  }

  instanceTypes(): Promise<InstanceType[]> {
    return this.catalog.types();
  }

  /** The architectures the configuration has a cell image for. */
  architectures(): Promise<Array<InstanceType['arch']>> {
    return Promise.resolve((['amd64', 'arm64'] as const).filter((a) => this.cfg.image[a] !== undefined));
  }

  catalogOrigin(): Promise<'live' | 'snapshot'> {
    return this.catalog.specs().then((s) => s.origin);
  }

  private deadline(): number {
    return Date.now() + this.cfg.operationTimeoutSeconds * 1000;
  }

  private waitOp(op: protos.google.cloud.compute.v1.IOperation, deadline = this.deadline()) {
    return waitOperation({ zone: this.zoneOps, global: this.globalOps }, this.cfg.project, op, deadline);
  }

  private async aggregated(filter?: string): Promise<Instance[]> {
    const out: Instance[] = [];
    const zones = new Set(this.cfg.zones.map((z) => `zones/${z}`));
    for await (const [scope, list] of this.instances.aggregatedListAsync(
      { project: this.cfg.project, ...(filter ? { filter } : {}), returnPartialSuccess: true },
      { timeout: this.cfg.operationTimeoutSeconds * 1000, autoPaginate: false },
    )) {
      if (zones.has(scope)) out.push(...(list.instances ?? []));
    }
    return out;
  }

  private async findCellInstance(cellId: string, controllerId: string): Promise<Instance | undefined> {
    const found = (await this.aggregated(`(labels.${LABELS.cell} = "${labelValue(cellId)}") (labels.${LABELS.controller} = "${labelValue(controllerId)}")`)).filter(
      (i) => this.tagsOf(i)[TAG_CELL] === cellId && i.status !== 'STOPPING' && i.status !== 'TERMINATED',
    );
    return found.sort((a, b) => String(a.creationTimestamp).localeCompare(String(b.creationTimestamp)))[0];
  }

  /** The managed rules a cell needs (key -1: between cells; else the agent port), made once and cached. */
  private agentFirewall(agentPort: number, controllerId: string): Promise<string | undefined> {
    const common = {
      client: this.firewalls,
      waitOp: (op: protos.google.cloud.compute.v1.IOperation) => this.waitOp(op),
      project: this.cfg.project,
      network: resourceUrl(this.cfg.network, this.cfg.project, 'networks', this.region),
      firewall: this.cfg.firewall,
      controllerId,
    };
    const between = this.firewallOnce(-1, () => ensureCellTrafficFirewall(common));
    const agent = this.firewallOnce(agentPort, () => ensureAgentFirewall({ ...common, agentPort }));
    return Promise.all([between, agent]).then(([, name]) => name);
  }

  /** The rule under `key`, made once; a failed attempt is forgotten so the next launch tries again. */
  private firewallOnce(key: number, make: () => Promise<string | undefined>): Promise<string | undefined> {
    let p = this.firewallRules.get(key);
    if (!p) {
      p = make();
      this.firewallRules.set(key, p);
      p.catch(() => this.firewallRules.delete(key));
    }
    return p;
  }

  /** Launches in flight: firewall pruning waits for them. */
  private launching = 0;

  async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    this.launching++;
    try {
      return await this.launchOnce(req);
    } finally {
      this.launching--;
    }
  }

  private async launchOnce(req: LaunchRequest): Promise<LaunchedInstance> {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(req.cellId)) throw new Error(`launch: cellId: "${req.cellId}" must be 1-64 of [A-Za-z0-9._-]`);
    const b = req.bootstrap;
    if (b.cellId !== req.cellId) throw new Error(`launch: bootstrap.cellId ${b.cellId} differs from cellId ${req.cellId}`);
    if (!b.caCertPem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('launch: bootstrap.caCertPem: the controller CA certificate (PEM) is required');
    if (b.token.length < 16) throw new Error('launch: bootstrap.token: a one-time token of at least 16 characters is required');
    const existing = await this.findCellInstance(req.cellId, b.controllerId);
    if (existing) {
      const info = this.info(existing);
      this.log.info({ cellId: req.cellId, instanceId: info.instanceId }, 'cell already has an instance; not launching another');
      this.m.launches.inc({ outcome: 'existing', model: info.spot ? 'spot' : 'standard' });
      return { instanceId: info.instanceId, spot: info.spot, ...(info.zone ? { zone: info.zone } : {}) };
    }
    const opt = req.options ?? {};
    for (const k of Object.keys(opt)) {
      if (![ANNOTATIONS.spot, ANNOTATIONS.bootDiskGb, ANNOTATIONS.serviceAccount].includes(k as never)) throw new Error(`launch: option ${k} is not supported by the gce provider`);
    }
    // Checked here too, whoever calls launch: the pod's namespace is in its tag.
    const podTag = req.tags[TAG_POD];
    const refusal = serviceAccountRefusal(this.cfg, podTag?.includes('/') ? podTag.slice(0, podTag.indexOf('/')) : undefined, opt);
    if (refusal) throw new Error(`launch: ${refusal}`);
    const saEmail = opt[ANNOTATIONS.serviceAccount] ?? this.cfg.serviceAccount?.email;
    const saScopes = this.cfg.serviceAccount?.scopes ?? ['https://www.googleapis.com/auth/cloud-platform'];
    const spotAnn = opt[ANNOTATIONS.spot];
    const spot = spotAnn !== undefined ? ['true', 'preferred', 'required'].includes(spotAnn.toLowerCase()) : req.spot || this.cfg.spot.default;
    const diskGb = opt[ANNOTATIONS.bootDiskGb] !== undefined ? Number(opt[ANNOTATIONS.bootDiskGb]) : this.cfg.bootDisk.sizeGb;
    if (!Number.isInteger(diskGb) || diskGb < 10 || diskGb > 65536)
      throw new Error(`launch: annotation ${ANNOTATIONS.bootDiskGb}: "${opt[ANNOTATIONS.bootDiskGb]}" must be an integer from 10 to 65536`);
    const spec = await this.catalog.spec(req.instanceType);
    if (!spec) throw new CapacityError(`machine type ${req.instanceType} is not offered in ${this.cfg.zones.join(', ')}`, req.instanceType);
    const image = this.cfg.image[spec.arch];
    if (!image) throw new CapacityError(`no cell image for ${spec.arch} (provider.image.${spec.arch}) for ${req.instanceType}`, req.instanceType);
    const zones = await this.catalog.zonesFor(req.instanceType, this.cfg.zones);
    await this.agentFirewall(b.agentPort, b.controllerId);

    const tags: Record<string, string> = { ...req.tags, [TAG_CONTROLLER]: b.controllerId, [TAG_CELL]: req.cellId };
    const labels: Record<string, string> = {
      ...this.cfg.extraLabels,
      [LABELS.controller]: labelValue(b.controllerId),
      [LABELS.cell]: labelValue(req.cellId),
      ...(tags[TAG_POD] ? { [LABELS.pod]: labelValue(tags[TAG_POD]) } : {}),
    };
    const userData = encodeUserData(b).toString('utf8');
    const name = instanceName(req.cellId);
    const models = spot ? (this.cfg.spot.fallbackToStandard ? [true, false] : [true]) : [false];
    const attempts: Array<{ zone: string; spot: boolean }> = [];
    for (const s of models) for (const zone of zones) attempts.push({ zone, spot: s });

    let lastWhy = 'every zone is marked unavailable for this machine type';
    for (const a of attempts) {
      if (this.unavailable.isUnavailable(req.instanceType, a.zone, a.spot)) continue;
      const model = a.spot ? 'spot' : 'standard';
      const resource: Instance = {
        name,
        machineType: `zones/${a.zone}/machineTypes/${req.instanceType}`,
        labels,
        tags: { items: [this.cfg.firewall.cellTag] },
        metadata: {
          items: [
            { key: METADATA_KEYS.userData, value: userData },
            { key: METADATA_KEYS.tags, value: JSON.stringify(tags) },
            { key: METADATA_KEYS.agentPort, value: String(b.agentPort) },
            // The agent reads its bootstrap from the metadata server: no SSH keys from the project.
            { key: 'block-project-ssh-keys', value: 'TRUE' },
          ],
        },
        disks: [
          {
            boot: true,
            autoDelete: true,
            type: 'PERSISTENT',
            initializeParams: { sourceImage: image, diskSizeGb: String(diskGb), diskType: `zones/${a.zone}/diskTypes/${this.cfg.bootDisk.type}`, labels },
          },
        ],
        networkInterfaces: [
          {
            network: resourceUrl(this.cfg.network, this.cfg.project, 'networks', this.region),
            ...(this.cfg.subnetwork ? { subnetwork: resourceUrl(this.cfg.subnetwork, this.cfg.project, 'subnetworks', this.region) } : {}),
            ...(this.cfg.externalIp ? { accessConfigs: [{ name: 'external-nat', type: 'ONE_TO_ONE_NAT', networkTier: 'PREMIUM' }] } : {}),
          },
        ],
        ...(this.cfg.shieldedVm ? { shieldedInstanceConfig: { enableSecureBoot: true, enableVtpm: true, enableIntegrityMonitoring: true } } : {}),
        ...(saEmail ? { serviceAccounts: [{ email: saEmail, scopes: saScopes }] } : {}),
        scheduling: a.spot
          ? { provisioningModel: 'SPOT', instanceTerminationAction: 'DELETE', automaticRestart: false, onHostMaintenance: 'TERMINATE' }
          : { provisioningModel: 'STANDARD', automaticRestart: true, onHostMaintenance: spec.gpus > 0 ? 'TERMINATE' : 'MIGRATE' },
      };
      const deadline = this.deadline();
      try {
        const [op] = await this.instances.insert(
          { project: this.cfg.project, zone: a.zone, instanceResource: resource, requestId: requestId(req.cellId, a.zone, a.spot) },
          { timeout: this.cfg.operationTimeoutSeconds * 1000 },
        );
        await this.waitOp(op.latestResponse as protos.google.cloud.compute.v1.IOperation, deadline);
        this.m.launches.inc({ outcome: 'launched', model });
        this.log.info({ cellId: req.cellId, instance: `${a.zone}/${name}`, machineType: req.instanceType, model }, 'launched cell instance');
        return { instanceId: `${a.zone}/${name}`, zone: a.zone, spot: a.spot };
      } catch (err) {
        const code = err instanceof OperationError ? err.code : syncCapacityCode(err);
        if (code !== undefined && CAPACITY_CODES.has(code)) {
          this.unavailable.mark(req.instanceType, a.zone, a.spot);
          this.m.capacity.inc({ machine_type: req.instanceType, zone: a.zone, model, code });
          this.log.warn({ cellId: req.cellId, machineType: req.instanceType, zone: a.zone, model, code }, 'no capacity; trying the next zone');
          lastWhy = `${code}: ${(err as Error).message}`;
          // GCE leaves no instance after a failed insert; one left by a race is removed here, so the next candidate starts clean.
          await this.deleteQuietly(a.zone, name);
          continue;
        }
        if (httpStatus(err) === 409) {
          // Our own earlier insert of this cell in this zone (a retry after a lost answer).
          this.m.launches.inc({ outcome: 'existing', model });
          return { instanceId: `${a.zone}/${name}`, zone: a.zone, spot: a.spot };
        }
        this.m.launches.inc({ outcome: 'error', model });
        throw err;
      }
    }
    this.m.launches.inc({ outcome: 'no-capacity', model: spot ? 'spot' : 'standard' });
    throw new CapacityError(`no capacity for ${req.instanceType} in ${[...new Set(attempts.map((a) => a.zone))].join(', ')} (${lastWhy})`, req.instanceType);
  }

  private async deleteQuietly(zone: string, name: string): Promise<void> {
    try {
      await this.deleteOne(zone, name);
    } catch (err) {
      this.log.warn({ err, instance: `${zone}/${name}` }, 'could not delete a failed launch');
    }
  }

  private tagsOf(i: Instance): Record<string, string> {
    const raw = i.metadata?.items?.find((x) => x.key === METADATA_KEYS.tags)?.value;
    if (raw) {
      try {
        const v = JSON.parse(raw) as unknown;
        if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v as Record<string, unknown>).filter(([, x]) => typeof x === 'string')) as Record<string, string>;
      } catch {
        // Not ours, or edited by hand: the labels below still say whose it is.
      }
    }
    const l = i.labels ?? {};
    return {
      ...(l[LABELS.controller] ? { [TAG_CONTROLLER]: l[LABELS.controller] } : {}),
      ...(l[LABELS.cell] ? { [TAG_CELL]: l[LABELS.cell] } : {}),
    };
  }

  private info(i: Instance): InstanceInfo {
    const zone = lastPart(i.zone);
    const instanceId = `${zone}/${i.name}`;
    const port = Number(i.metadata?.items?.find((x) => x.key === METADATA_KEYS.agentPort)?.value ?? 0);
    const nic = i.networkInterfaces?.[0];
    const ip = this.cfg.addressType === 'external' ? nic?.accessConfigs?.[0]?.natIP : nic?.networkIP;
    const agentAddress = this.opts.testAgentAddressMap ? this.opts.testAgentAddressMap(instanceId) : ip && port ? `${ip}:${port}` : undefined;
    const states: Record<string, InstanceInfo['state']> = {
      PROVISIONING: 'pending',
      STAGING: 'pending',
      RUNNING: 'running',
      STOPPING: 'stopping',
      SUSPENDING: 'stopping',
      SUSPENDED: 'stopped',
      // GCE's TERMINATED is a stopped VM (its disk is kept), not a deleted one.
      TERMINATED: 'stopped',
    };
    return {
      instanceId,
      state: states[i.status ?? ''] ?? 'unknown',
      ...(agentAddress ? { agentAddress } : {}),
      tags: this.tagsOf(i),
      instanceType: lastPart(i.machineType),
      ...(i.creationTimestamp ? { launchedAt: new Date(i.creationTimestamp) } : {}),
      spot: i.scheduling?.provisioningModel === 'SPOT',
      zone,
    };
  }

  /** instances.get per ID (unknown or malformed IDs are absent); many IDs: one aggregatedList. */
  async describe(instanceIds: string[]): Promise<InstanceInfo[]> {
    const ids = [...new Set(instanceIds)].filter((id) => parseId(id) !== undefined);
    if (ids.length === 0) return [];
    if (ids.length > CONCURRENCY) {
      const want = new Set(ids);
      return (await this.aggregated()).map((i) => this.info(i)).filter((x) => want.has(x.instanceId));
    }
    const out: InstanceInfo[] = [];
    await eachLimited(ids, async (id) => {
      const { zone, name } = parseId(id)!;
      try {
        const [i] = await this.instances.get({ project: this.cfg.project, zone, instance: name }, { timeout: 30_000 });
        out.push(this.info(i));
      } catch (err) {
        if (httpStatus(err) !== 404) throw err;
      }
    });
    return ids.map((id) => out.find((o) => o.instanceId === id)).filter((x): x is InstanceInfo => x !== undefined);
  }

  /** Instances labelled with this controller (exact ID checked in the tags): what GC after a store wipe starts from. */
  async listOwned(controllerId: string): Promise<InstanceInfo[]> {
    const found = await this.aggregated(`labels.${LABELS.controller} = "${labelValue(controllerId)}"`);
    return found.map((i) => this.info(i)).filter((i) => i.tags[TAG_CONTROLLER] === controllerId);
  }

  private async deleteOne(zone: string, name: string): Promise<void> {
    const deadline = this.deadline();
    try {
      const [op] = await this.instances.delete({ project: this.cfg.project, zone, instance: name }, { timeout: 30_000 });
      await this.waitOp(op.latestResponse as protos.google.cloud.compute.v1.IOperation, deadline);
    } catch (err) {
      if (httpStatus(err) === 404) return;
      if (err instanceof OperationError && err.code === 'RESOURCE_NOT_FOUND') return;
      throw err;
    }
  }

  /** Deletes each instance and waits for its operation (deadline-bound); what is gone already is not an error. */
  async terminate(instanceIds: string[]): Promise<void> {
    const ids = [...new Set(instanceIds)].filter((id) => parseId(id) !== undefined);
    await eachLimited(ids, async (id) => {
      const { zone, name } = parseId(id)!;
      await this.deleteOne(zone, name);
    });
    if (ids.length) this.log.info({ instanceIds: ids }, 'deleted cell instances');
  }

  /** The region's quotas (regions.get): INSTANCES, and CPUS (PREEMPTIBLE_CPUS when cells are Spot by default). */
  async capacity(): Promise<ProviderCapacity> {
    const [r] = await this.regions.get({ project: this.cfg.project, region: this.region }, { timeout: 30_000 });
    const q = (metric: string) => r.quotas?.find((x) => x.metric === metric);
    const inst = q('INSTANCES');
    if (!inst || typeof inst.limit !== 'number') throw new Error(`regions.get ${this.region}: no INSTANCES quota in the answer`);
    const cpus = q(this.cfg.spot.default ? 'PREEMPTIBLE_CPUS' : 'CPUS') ?? q('CPUS');
    const whole = (x: { limit?: number | null; usage?: number | null }) => ({ limit: Math.max(0, Math.floor(x.limit ?? 0)), used: Math.max(0, Math.ceil(x.usage ?? 0)) });
    return { instances: whole(inst), ...(cpus ? { vcpus: whole(cpus) } : {}), source: `compute:regions.get ${this.region}` };
  }

  /** Called by the controller's GC: the agent firewall rules no live cell uses. */
  collectUnused(controllerId: string): Promise<string[]> {
    return this.pruneFirewalls(controllerId);
  }

  /**
   * Deletes this controller's agent firewall rules for ports no live cell of it uses (GC).
   * Nothing while a launch is in flight: its VM is not listed yet but needs its rule.
   */
  async pruneFirewalls(controllerId: string): Promise<string[]> {
    if (this.launching > 0) return [];
    const ports = new Set<number>();
    for (const i of await this.aggregated(`labels.${LABELS.controller} = "${labelValue(controllerId)}"`)) {
      if (this.tagsOf(i)[TAG_CONTROLLER] !== controllerId) continue;
      ports.add(Number(i.metadata?.items?.find((x) => x.key === METADATA_KEYS.agentPort)?.value ?? 0));
    }
    if (this.launching > 0) return [];
    const removed = await pruneAgentFirewalls({ client: this.firewalls, waitOp: (op) => this.waitOp(op), project: this.cfg.project, controllerId, keepPorts: ports });
    for (const p of this.firewallRules.keys()) if (p === -1 ? ports.size === 0 : !ports.has(p)) this.firewallRules.delete(p);
    return removed;
  }

  async close(): Promise<void> {
    await Promise.all([this.instances.close(), this.zoneOps.close(), this.globalOps.close(), this.machineTypes.close(), this.regions.close(), this.firewalls.close()]);
  }
}

/** The provider for `provider: {kind: gce, ...}` (every other key is validated here, errors naming `provider.<field>`). */
export function gceProviderFromConfig(section: Record<string, unknown>, o: Omit<GceProviderOptions, 'config'>): GceProvider {
  const { kind: _kind, ...rest } = section;
  return new GceProvider({ ...o, config: parseGceProviderConfig(rest, 'provider') });
}
