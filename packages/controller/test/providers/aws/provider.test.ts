// The aws provider against a real EC2 API emulator (moto server on loopback). Capacity
// shortages and throttling, which moto does not emulate, are injected as EC2's own error
// responses by a test middleware (fault-injection.ts).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DescribeInstancesCommand, DescribeSecurityGroupsCommand, DescribeVolumesCommand, EC2Client, type Instance } from '@aws-sdk/client-ec2';
import { startMoto, waitFor, type MotoServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CapacityError, type LaunchRequest } from '../../../src/providers/provider.js';
import { AwsProvider, CELL_TAGS, collectOrphans, decodeUserData, encodeUserData, parseAwsProviderConfig, type AwsProviderConfigInput } from '../../../src/providers/aws/index.js';
import { injectEc2Faults } from './fault-injection.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

let moto: MotoServer;
let world: MotoWorld;
let raw: EC2Client;
const providers: AwsProvider[] = [];
const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n';

function provider(over: Partial<AwsProviderConfigInput> = {}, controllerId = 'ctl-a'): AwsProvider {
  const p = new AwsProvider({
    config: world.config(over),
    controllerId,
    clientConfig: { credentials: moto.credentials },
    logger: pino({ level: process.env['LOG_LEVEL'] ?? 'silent' }),
  });
  providers.push(p);
  return p;
}

let seq = 0;
function request(over: Partial<LaunchRequest> = {}, controllerId = 'ctl-a'): LaunchRequest {
  const cellId = over.cellId ?? `cell-${process.pid}-${++seq}`;
  return {
    cellId,
    instanceType: 't3.small',
    spot: false,
    tags: { [CELL_TAGS.pod]: `default/web-${seq}` },
    bootstrap: {
      caCertPem: CA_PEM,
      token: `cbt_token-for-${cellId}`,
      tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      controllerId,
      cellId,
      agentPort: 9443,
    },
    ...over,
  };
}

async function rawInstance(id: string): Promise<Instance> {
  const r = await raw.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
  return r.Reservations![0]!.Instances![0]!;
}

async function instancesOfCell(cellId: string): Promise<Instance[]> {
  const r = await raw.send(
    new DescribeInstancesCommand({
      Filters: [
        { Name: `tag:${CELL_TAGS.cellId}`, Values: [cellId] },
        { Name: 'instance-state-name', Values: ['pending', 'running'] },
      ],
    }),
  );
  return (r.Reservations ?? []).flatMap((x) => x.Instances ?? []);
}

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  raw = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
});

afterAll(async () => {
  for (const p of providers) await p.close();
  raw?.destroy();
  await moto?.stop();
});

describe('configuration', () => {
  it('names the field that is wrong', () => {
    expect(() => parseAwsProviderConfig({ image: { id: 'ami-0abc' }, subnets: ['nope'] })).toThrow(/providers\.aws\.subnets\.0: must be a subnet ID/);
    expect(() => parseAwsProviderConfig({ subnets: ['subnet-0abc'] })).toThrow(/providers\.aws\.image/);
    expect(() => parseAwsProviderConfig({ image: { id: 'ami-0abc' }, subnets: ['subnet-0abc'], cellSecurityGroup: { vpcId: 'vpc-0abc' } })).toThrow(
      /providers\.aws\.cellSecurityGroup: needs allowFromSecurityGroups or allowFromCidrs/,
    );
    expect(() => parseAwsProviderConfig({ image: { id: 'ami-0abc' }, subnets: ['subnet-0abc'], bogus: 1 })).toThrow(/bogus/);
    expect(() => parseAwsProviderConfig({ image: { id: 'ami-0abc' }, subnets: ['subnet-0abc'], instanceProfiles: { allowed: [{ namespaces: [], profiles: ['r'] }] } })).toThrow(
      /providers\.aws\.instanceProfiles\.allowed\.0\.namespaces: list at least one namespace/,
    );
  });
});

describe('user data', () => {
  it('round-trips, and refuses private keys and oversize data', () => {
    const b = request().bootstrap;
    expect(decodeUserData(encodeUserData(b))).toEqual(b);
    expect(() => encodeUserData({ ...b, agentConfig: { k: '-----BEGIN EC PRIVATE KEY-----\nx' } })).toThrow(/private key/);
    expect(() => encodeUserData({ ...b, agentConfig: { big: 'x'.repeat(17_000) } })).toThrow(/over EC2's limit of 16384/);
  });
});

describe('AwsProvider on moto', () => {
  it('refuses to launch a cell that could never be bootstrapped', async () => {
    const p = provider();
    const r = request();
    await expect(p.launch({ ...r, bootstrap: { ...r.bootstrap, caCertPem: '' } })).rejects.toThrow(/bootstrap\.caCertPem/);
    await expect(p.launch({ ...r, bootstrap: { ...r.bootstrap, token: 'short' } })).rejects.toThrow(/bootstrap\.token/);
    expect(await instancesOfCell(r.cellId)).toEqual([]);
  });

  it('reads the catalog live from DescribeInstanceTypes and prices it from the data file', async () => {
    const p = provider({ instanceTypes: ['t3.*', 'g4dn.xlarge', 'm7g.large'], liveCatalog: true });
    const faults = injectEc2Faults(p.ec2, []);
    const types = await p.instanceTypes();
    expect(await p.catalogOrigin()).toBe('live');
    const small = types.find((t) => t.name === 't3.small')!;
    expect(small).toMatchObject({ vcpus: 2, memoryMiB: 2048, gpus: 0, baselineCpuFraction: 0.2, arch: 'amd64', onDemandHourlyUsd: 0.0208 });
    expect(small.spotHourlyUsd).toBeLessThan(small.onDemandHourlyUsd);
    expect(types.find((t) => t.name === 'g4dn.xlarge')).toMatchObject({ gpus: 1, gpuType: 'nvidia-t4' });
    expect(types.find((t) => t.name === 'm7g.large')?.arch).toBe('arm64');
    expect(types.every((t) => t.name.startsWith('t3.') || t.name === 'g4dn.xlarge' || t.name === 'm7g.large')).toBe(true);
    // The globs went to EC2 as a filter: one page, not the whole region.
    expect(faults.count('DescribeInstanceTypes')).toBe(1);
    await p.instanceTypes();
    expect(faults.count('DescribeInstanceTypes')).toBe(1); // cached
  });

  it('falls back to the bundled snapshot when DescribeInstanceTypes is unreachable', async () => {
    const p = provider({ endpoint: 'http://127.0.0.1:9', maxAttempts: 1, instanceTypes: ['t3.small'], liveCatalog: true });
    const types = await p.instanceTypes();
    expect(await p.catalogOrigin()).toBe('snapshot');
    expect(types).toEqual([expect.objectContaining({ name: 't3.small', vcpus: 2, memoryMiB: 2048 })]);
  });

  it('launches an instance with the right type, image, tags, security groups, IMDSv2, volume and user data', async () => {
    const p = provider({ instanceProfiles: { allowed: [{ namespaces: ['default'], profiles: [world.instanceProfile] }] } });
    const sent = injectEc2Faults(p.ec2, []);
    const req = request({ options: { 'cello.io/aws-root-volume-gib': '33', 'cello.io/aws-instance-profile': world.instanceProfile } });
    const launched = await p.launch(req);
    expect(launched.instanceId).toMatch(/^i-/);
    expect(launched.spot).toBe(false);

    const i = await rawInstance(launched.instanceId);
    expect(i.InstanceType).toBe('t3.small');
    expect(i.ImageId).toBe(world.imageId);
    expect(i.SubnetId).toBe(world.subnets[0]!.id);
    expect(i.Placement?.AvailabilityZone).toBe('us-east-1a');
    expect(i.InstanceLifecycle).toBeUndefined();
    expect(i.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpEndpoint: 'enabled', HttpPutResponseHopLimit: 2 });
    expect(i.IamInstanceProfile?.Arn ?? '').toContain('pod-role');
    const tags = Object.fromEntries((i.Tags ?? []).map((t) => [t.Key, t.Value]));
    expect(tags).toMatchObject({
      [CELL_TAGS.controllerId]: 'ctl-a',
      [CELL_TAGS.cellId]: req.cellId,
      [CELL_TAGS.pod]: req.tags[CELL_TAGS.pod],
      'cello.io/agent-port': '9443',
    });

    // The managed cell group admits the agent port only from the controller's group, and pod
    // traffic from the other cells on every other port (security-group.test.ts has the rest).
    const groupIds = (i.SecurityGroups ?? []).map((g) => g.GroupId!);
    const groups = await raw.send(new DescribeSecurityGroupsCommand({ GroupIds: groupIds }));
    const cellGroup = groups.SecurityGroups!.find((g) => g.GroupName === 'cello-cells')!;
    expect(cellGroup).toBeDefined();
    const agentPort = cellGroup.IpPermissions!.filter((p) => p.IpProtocol === 'tcp' && p.FromPort! <= 9443 && p.ToPort! >= 9443);
    expect(agentPort).toEqual([
      expect.objectContaining({ IpProtocol: 'tcp', FromPort: 9443, ToPort: 9443, UserIdGroupPairs: [expect.objectContaining({ GroupId: world.controllerSg })] }),
    ]);
    expect(agentPort[0]!.IpRanges ?? []).toEqual([]);
    expect(cellGroup.IpPermissions!.filter((p) => p.UserIdGroupPairs?.some((u) => u.GroupId === cellGroup.GroupId)).map((p) => p.IpProtocol)).toEqual(
      expect.arrayContaining(['tcp', 'udp', 'icmp', '132']),
    );

    // Root volume: encrypted, sized by the annotation, tagged like the instance, gone with it.
    const vols = await raw.send(new DescribeVolumesCommand({ Filters: [{ Name: 'attachment.instance-id', Values: [launched.instanceId] }] }));
    const root = vols.Volumes!.find((v) => v.Attachments?.[0]?.Device === world.rootDeviceName)!;
    expect(root).toMatchObject({ Size: 33, Encrypted: true });
    // moto does not report DeleteOnTermination back: check what was asked of EC2.
    const run = sent.calls.find((c) => c.command === 'RunInstances')!.input as { BlockDeviceMappings: unknown; InstanceInitiatedShutdownBehavior: string };
    expect(run.BlockDeviceMappings).toEqual([{ DeviceName: world.rootDeviceName, Ebs: { VolumeSize: 33, VolumeType: 'gp3', Encrypted: true, DeleteOnTermination: true } }]);
    expect(run.InstanceInitiatedShutdownBehavior).toBe('terminate');
    expect(Object.fromEntries((root.Tags ?? []).map((t) => [t.Key, t.Value]))).toMatchObject({ [CELL_TAGS.cellId]: req.cellId });

    // User data read back from EC2 is the bootstrap, and only it.
    const ud = await p.userData(launched.instanceId);
    expect(ud).toEqual(req.bootstrap);

    // describe reports it, with the agent address from its private IP (never contacted here).
    const [info] = await p.describe([launched.instanceId]);
    expect(info).toMatchObject({ instanceId: launched.instanceId, instanceType: 't3.small', spot: false, zone: 'us-east-1a' });
    expect(info!.agentAddress).toBe(`${i.PrivateIpAddress}:9443`);
  });

  it('ecr.mode instance-profile: the user data tells the cell to get its own ECR tokens; other modes say nothing', async () => {
    const own = provider({ instanceProfile: world.instanceProfile, ecr: { mode: 'instance-profile' } });
    const req = request();
    const launched = await own.launch(req);
    expect(await own.userData(launched.instanceId)).toEqual({ ...req.bootstrap, agentConfig: { ecrCredentials: 'instance-profile' } });
    const plain = provider({ instanceProfile: world.instanceProfile });
    const req2 = request();
    expect((await plain.userData((await plain.launch(req2)).instanceId)).agentConfig).toBeUndefined();
    await Promise.all([own.terminate([launched.instanceId]), plain.terminate((await instancesOfCell(req2.cellId)).map((i) => i.InstanceId!))]);
    // Without an instance profile the cells could never get a token: refused at configuration.
    expect(() => parseAwsProviderConfig({ image: { id: 'ami-0123456789abcdef0' }, subnets: ['subnet-0123'], ecr: { mode: 'instance-profile' } })).toThrow(
      'providers.aws.ecr.mode: ecr.mode instance-profile needs instanceProfile',
    );
  });

  it("an instance profile annotation is refused unless a rule allows that profile in the pod's namespace; nothing is launched", async () => {
    const ann = { 'cello.io/aws-instance-profile': world.instanceProfile };
    // No rule: only the configured default profile, whoever asks.
    const none = provider({ instanceProfile: world.instanceProfile });
    const req0 = request({ options: ann });
    await expect(none.launch(req0)).rejects.toThrow(
      `launch: annotation cello.io/aws-instance-profile: instance profile "pod-role" is not allowed in namespace "default": provider.instanceProfiles.allowed is empty, so pods keep the configured instanceProfile`,
    );
    expect(await instancesOfCell(req0.cellId)).toEqual([]);
    // A rule for another namespace, and one for another profile: neither lists both.
    const p = provider({
      instanceProfiles: {
        allowed: [
          { namespaces: ['team-a'], profiles: [world.instanceProfile] },
          { namespaces: ['default'], profiles: ['other-role'] },
        ],
      },
    });
    const req1 = request({ options: ann });
    await expect(p.launch(req1)).rejects.toThrow(/not allowed in namespace "default": no rule of provider.instanceProfiles.allowed lists both/);
    expect(await instancesOfCell(req1.cellId)).toEqual([]);
    expect(p.refusePod({ namespace: 'default', annotations: ann })).toMatch(/not allowed in namespace "default"/);
    // A cell launched for no pod (the warm pool) never takes a profile from options.
    await expect(p.launch(request({ options: ann, tags: {} }))).rejects.toThrow(/not allowed in a cell without a pod/);
    // The namespace the rule names gets it.
    expect(p.refusePod({ namespace: 'team-a', annotations: ann })).toBeUndefined();
    expect(p.refusePod({ namespace: 'default', annotations: {} })).toBeUndefined();
    const ok = await p.launch(request({ options: ann, tags: { [CELL_TAGS.pod]: 'team-a/web' } }));
    expect((await rawInstance(ok.instanceId)).IamInstanceProfile?.Arn ?? '').toContain('pod-role');
    // `*` is a wildcard, explicitly.
    const any = provider({ instanceProfiles: { allowed: [{ namespaces: ['*'], profiles: ['*'] }] } });
    expect(any.refusePod({ namespace: 'x', annotations: { 'cello.io/aws-instance-profile': 'anything' } })).toBeUndefined();
    await p.terminate([ok.instanceId]);
  });

  it('resolves the image by name filter and owner', async () => {
    const p = provider({ image: { name: 'cello-cell-*', owners: ['self', '123456789012'] } });
    const l = await p.launch(request());
    expect((await rawInstance(l.instanceId)).ImageId).toBe(world.imageId);
    const bad = provider({ image: { name: 'no-such-image-*', owners: ['self'] } });
    await expect(bad.launch(request())).rejects.toThrow(/providers\.aws\.image\.name: no available x86_64 image named "no-such-image-\*"/);
  });

  it('batches describe into one call and leaves unknown IDs out', async () => {
    const p = provider();
    const ids: string[] = [];
    for (let k = 0; k < 3; k++) ids.push((await p.launch(request())).instanceId);
    const faults = injectEc2Faults(p.ec2, []);
    const infos = await p.describe([...ids, 'i-00000000000000000', ids[0]!]);
    expect(infos.map((x) => x.instanceId).sort()).toEqual([...ids].sort());
    expect(faults.count('DescribeInstances')).toBe(1);
    // Many callers at once (the reconciler asking per booting cell): still one call.
    const each = await Promise.all(ids.map((id) => p.describe([id])));
    expect(each.map((r) => r.map((x) => x.instanceId))).toEqual(ids.map((id) => [id]));
    expect(faults.count('DescribeInstances')).toBe(2);
  });

  it('terminates, and terminated instances are no longer owned', async () => {
    const p = provider({}, 'ctl-term');
    const a = await p.launch(request({}, 'ctl-term'));
    const b = await p.launch(request({}, 'ctl-term'));
    expect((await p.listOwned('ctl-term')).map((x) => x.instanceId).sort()).toEqual([a.instanceId, b.instanceId].sort());
    await p.terminate([a.instanceId, 'i-0123456789abcdef0']);
    expect((await rawInstance(a.instanceId)).State?.Name).toBe('terminated');
    expect((await p.listOwned('ctl-term')).map((x) => x.instanceId)).toEqual([b.instanceId]);
  });

  it('is idempotent per cell: a second launch of the same cell returns the same instance', async () => {
    const p = provider();
    const req = request();
    const first = await p.launch(req);
    const again = await provider().launch(req);
    expect(again.instanceId).toBe(first.instanceId);
    expect((await instancesOfCell(req.cellId)).length).toBe(1);
  });

  it('a controller killed mid-launch and restarted launches no duplicate and leaks nothing', async () => {
    const req = request({}, 'ctl-kill');
    // The "controller": a real process that launches through the built provider; it is killed
    // with SIGKILL the moment EC2 has the instance, before it can record anything.
    const dist = fileURLToPath(new URL('../../../dist/providers/aws/index.js', import.meta.url));
    const script = `
      import { AwsProvider, parseAwsProviderConfig } from ${JSON.stringify(dist)};
      const cfg = parseAwsProviderConfig(JSON.parse(process.env.CFG));
      const p = new AwsProvider({ config: cfg, controllerId: 'ctl-kill', clientConfig: { credentials: { accessKeyId: 't', secretAccessKey: 't' } } });
      await p.launch(JSON.parse(process.env.REQ));
      await new Promise((r) => setTimeout(r, 60000));`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, CFG: JSON.stringify(world.config()), REQ: JSON.stringify(req) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const seen = await waitFor(
      `the killed controller's instance for ${req.cellId}`,
      async () => {
        if (child.exitCode !== null) throw new Error(`controller process exited early: ${err}`);
        return (await instancesOfCell(req.cellId))[0];
      },
      { timeoutMs: 60_000, intervalMs: 50 },
    );
    child.kill('SIGKILL');
    await exited;

    // Restarted controller: same cell (its record says Creating), launch again.
    const p = provider({}, 'ctl-kill');
    const l = await p.launch(req);
    expect(l.instanceId).toBe(seen.InstanceId);
    const all = await p.listOwned('ctl-kill');
    expect(all.map((x) => x.instanceId)).toEqual([seen.InstanceId]);
  });

  it('collects garbage by controller ID: unknown cells and duplicates go, other controllers survive', async () => {
    const a = provider({}, 'ctl-gc-a');
    const b = provider({}, 'ctl-gc-b');
    const known = await a.launch(request({}, 'ctl-gc-a'));
    const knownCellId = (await a.describe([known.instanceId]))[0]!.tags[CELL_TAGS.cellId]!;
    const orphan = await a.launch(request({}, 'ctl-gc-a'));
    const other = await b.launch(request({}, 'ctl-gc-b'));

    // Young instances are spared by default (a launch may be recording its cell right now).
    const spared = await collectOrphans({ provider: a, controllerId: 'ctl-gc-a', knownCells: new Map([[knownCellId, known.instanceId]]) });
    expect(spared).toMatchObject({ terminated: [], kept: 1, tooYoung: 1 });

    const r1 = await collectOrphans({ provider: a, controllerId: 'ctl-gc-a', knownCells: new Map([[knownCellId, known.instanceId]]), minAgeMs: 0 });
    expect(r1.terminated).toEqual([expect.objectContaining({ instanceId: orphan.instanceId, reason: 'unknown-cell' })]);
    expect((await rawInstance(orphan.instanceId)).State?.Name).toBe('terminated');
    expect((await rawInstance(known.instanceId)).State?.Name).toBe('running');

    // Store wiped: everything this controller owns goes; the other controller's instance stays.
    const r2 = await collectOrphans({ provider: a, controllerId: 'ctl-gc-a', knownCells: new Map(), minAgeMs: 0 });
    expect(r2.terminated.map((t) => t.instanceId)).toEqual([known.instanceId]);
    expect((await rawInstance(known.instanceId)).State?.Name).toBe('terminated');
    expect((await rawInstance(other.instanceId)).State?.Name).toBe('running');
    expect((await b.listOwned('ctl-gc-b')).map((x) => x.instanceId)).toEqual([other.instanceId]);
  });

  it('launches spot (one-time, terminate on interruption) by annotation', async () => {
    const p = provider();
    const faults = injectEc2Faults(p.ec2, []);
    const l = await p.launch(request({ options: { 'cello.io/spot': 'true' } }));
    expect(l.spot).toBe(true);
    expect((await rawInstance(l.instanceId)).InstanceLifecycle).toBe('spot');
    const run = faults.calls.find((c) => c.command === 'RunInstances')!;
    expect(run.input['InstanceMarketOptions']).toEqual({
      MarketType: 'spot',
      SpotOptions: { SpotInstanceType: 'one-time', InstanceInterruptionBehavior: 'terminate' },
    });
    expect((await p.describe([l.instanceId]))[0]!.spot).toBe(true);
  });

  it('falls back from spot to on-demand when spot has no capacity anywhere (when configured)', async () => {
    const p = provider({ spot: { default: false, fallbackToOnDemand: true } });
    const isSpot = (i: Record<string, unknown>) => i['InstanceMarketOptions'] !== undefined;
    const faults = injectEc2Faults(p.ec2, [{ command: 'RunInstances', when: isSpot, code: 'InsufficientInstanceCapacity' }]);
    const l = await p.launch(request({ spot: true }));
    expect(l.spot).toBe(false);
    expect((await rawInstance(l.instanceId)).InstanceLifecycle).toBeUndefined();
    expect(faults.count('RunInstances', isSpot)).toBe(2); // one per zone
    const strict = provider({ spot: { default: false, fallbackToOnDemand: false } });
    injectEc2Faults(strict.ec2, [{ command: 'RunInstances', when: isSpot, code: 'InsufficientInstanceCapacity' }]);
    await expect(strict.launch(request({ spot: true }))).rejects.toBeInstanceOf(CapacityError);
  });

  it('moves to the next zone on InsufficientInstanceCapacity and remembers the pair', async () => {
    const p = provider();
    const zoneA = (i: Record<string, unknown>) => i['SubnetId'] === world.subnets[0]!.id;
    const faults = injectEc2Faults(p.ec2, [{ command: 'RunInstances', when: zoneA, code: 'InsufficientInstanceCapacity' }]);
    const l1 = await p.launch(request());
    expect(l1.zone).toBe('us-east-1b');
    expect(faults.count('RunInstances', zoneA)).toBe(1);
    // The (type, zone) pair is marked unavailable: the next launch goes straight to zone b ...
    const l2 = await p.launch(request());
    expect(l2.zone).toBe('us-east-1b');
    expect(faults.count('RunInstances', zoneA)).toBe(1);
    // ... but another type still tries zone a first.
    const l3 = await p.launch(request({ instanceType: 't3.medium' }));
    expect(faults.count('RunInstances', zoneA)).toBe(2);
    expect(l3.zone).toBe('us-east-1b');
    const metrics = await p.registry.getSingleMetricAsString('cello_aws_capacity_errors_total');
    expect(metrics).toMatch(/instance_type="t3.small",zone="us-east-1a",market="on-demand"} 1/);
  });

  it('throws CapacityError when no zone has the type, and for a type the region does not offer', async () => {
    const p = provider();
    injectEc2Faults(p.ec2, [
      { command: 'RunInstances', when: (i) => i['InstanceType'] === 'c5.large', code: 'InsufficientInstanceCapacity' },
      {
        command: 'RunInstances',
        when: (i) => i['InstanceType'] === 'm5.large',
        code: 'Unsupported',
        message: 'Your requested instance type (m5.large) is not supported in your requested Availability Zone',
      },
    ]);
    const e1 = await p.launch(request({ instanceType: 'c5.large' })).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(CapacityError);
    expect((e1 as CapacityError).instanceType).toBe('c5.large');
    expect((e1 as Error).message).toMatch(/us-east-1a, us-east-1b.*InsufficientInstanceCapacity/);
    await expect(p.launch(request({ instanceType: 'm5.large' }))).rejects.toBeInstanceOf(CapacityError);
    await expect(p.launch(request({ instanceType: 'x9.nonexistent' }))).rejects.toBeInstanceOf(CapacityError);
  });

  it('retries throttling with backoff and gives up after maxAttempts', async () => {
    const p = provider({ maxAttempts: 4 });
    const l = await p.launch(request());
    const faults = injectEc2Faults(p.ec2, [{ command: 'DescribeInstances', code: 'RequestLimitExceeded', message: 'Request limit exceeded.', status: 503, times: 2 }]);
    const t0 = Date.now();
    const infos = await p.describe([l.instanceId]);
    const took = Date.now() - t0;
    expect(infos.map((x) => x.instanceId)).toEqual([l.instanceId]);
    expect(faults.calls.filter((c) => c.command === 'DescribeInstances').map((c) => c.injected ?? 'ok')).toEqual(['RequestLimitExceeded', 'RequestLimitExceeded', 'ok']);
    expect(took).toBeGreaterThan(50); // it waited between attempts

    const always = provider({ maxAttempts: 3 });
    const f2 = injectEc2Faults(always.ec2, [{ command: 'TerminateInstances', code: 'RequestLimitExceeded', status: 503 }]);
    await expect(always.terminate([l.instanceId])).rejects.toThrow(/Request ?limit|RequestLimitExceeded/i);
    expect(f2.count('TerminateInstances')).toBe(3);
    expect(await always.registry.getSingleMetricAsString('cello_aws_api_errors_total')).toMatch(/operation="TerminateInstances",code="RequestLimitExceeded"} 1/);
  });
});
