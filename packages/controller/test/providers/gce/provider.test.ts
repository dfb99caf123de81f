// The gce provider beyond the shared contract, against the GCE fake of @cello/testkit (no
// Compute Engine emulator exists): what an instance is launched with, Spot and its fallback to
// standard zone by zone, quota refusals, deadlines on operations, GC by labels after a store
// wipe, the managed firewall rule, configuration errors, and a caller without credentials.
import { startGceFake, type GceFake } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { decodeUserData } from '../../../src/providers/aws/user-data.js';
import { collectOrphans } from '../../../src/providers/aws/gc.js';
import { CapacityError, type LaunchRequest } from '../../../src/providers/provider.js';
import { GceProvider, parseGceProviderConfig, type GceProviderConfigInput } from '../../../src/providers/gce/index.js';

const silent = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
let seq = 0;

function request(controllerId: string, over: Partial<LaunchRequest> = {}): LaunchRequest {
  const cellId = `cell-gce${process.pid}x${++seq}`;
  return {
    cellId,
    instanceType: 'e2-small',
    spot: false,
    tags: { 'cello.io/controller-id': controllerId, 'cello.io/cell-id': cellId, 'cello.io/pod': 'team-a/web-1' },
    bootstrap: {
      caCertPem: '-----BEGIN CERTIFICATE-----\nMIIBgce\n-----END CERTIFICATE-----\n',
      token: `one-time-token-${cellId}`,
      tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      controllerId,
      cellId,
      agentPort: 9443,
    },
    ...over,
  };
}

describe('gce provider (GCE fake)', () => {
  let gce: GceFake;
  const providers: GceProvider[] = [];
  const make = (over: Partial<GceProviderConfigInput> = {}, controllerId = 'ctl-gce', auth: unknown = gce.authClient): GceProvider => {
    const p = new GceProvider({
      config: parseGceProviderConfig({
        project: gce.project,
        zones: gce.zones,
        endpoint: gce.endpoint,
        image: { amd64: `projects/${gce.project}/global/images/cello-cell` },
        firewall: { allowFromCidrs: ['10.0.0.0/8'] },
        operationTimeoutSeconds: 10,
        ...over,
      }),
      controllerId,
      clientOptions: { authClient: auth as never },
      logger: silent,
    });
    providers.push(p);
    return p;
  };
  const instance = (id: string) => gce.instances().find((i) => `${String(i['zone']).split('/').pop()}/${String(i['name'])}` === id);

  beforeEach(async () => {
    gce = await startGceFake();
  });
  afterEach(async () => {
    await Promise.all(providers.splice(0).map((p) => p.close()));
    await gce.stop();
  });

  it('launches a labelled Shielded VM with no external IP, the bootstrap in metadata, and the agent firewall rule by network tag', async () => {
    const p = make();
    const req = request('ctl-gce');
    const got = await p.launch(req);
    expect(got).toMatchObject({ zone: gce.zones[0], spot: false });
    const i = instance(got.instanceId)!;
    expect(i['labels']).toEqual({ 'cello-controller': 'ctl-gce', 'cello-cell': req.cellId, 'cello-pod': 'team-a_web-1' });
    expect(i['shieldedInstanceConfig']).toEqual({ enableSecureBoot: true, enableVtpm: true, enableIntegrityMonitoring: true });
    const nic = (i['networkInterfaces'] as Array<Record<string, unknown>>)[0]!;
    expect(nic['accessConfigs']).toBeUndefined();
    expect(nic['network']).toBe(`projects/${gce.project}/global/networks/default`);
    expect(i['tags']).toEqual({ items: ['cello-cell'] });
    expect(i['scheduling']).toMatchObject({ provisioningModel: 'STANDARD' });
    const items = (i['metadata'] as { items: Array<{ key: string; value: string }> }).items;
    const ud = decodeUserData(items.find((x) => x.key === 'user-data')!.value);
    expect(ud).toMatchObject({ cellId: req.cellId, token: req.bootstrap.token, agentPort: 9443 });
    expect(JSON.stringify(items)).not.toMatch(/PRIVATE KEY/);
    const disk = (i['disks'] as Array<{ initializeParams: Record<string, unknown>; autoDelete: boolean }>)[0]!;
    expect(disk.autoDelete).toBe(true);
    expect(disk.initializeParams['sourceImage']).toBe(`projects/${gce.project}/global/images/cello-cell`);

    const fw = gce.firewalls();
    expect(fw).toHaveLength(1);
    expect(fw[0]).toMatchObject({ direction: 'INGRESS', targetTags: ['cello-cell'], sourceRanges: ['10.0.0.0/8'], allowed: [{ IPProtocol: 'tcp', ports: ['9443'] }] });

    // Idempotent: the same cell again is the same instance, not a second one.
    expect((await p.launch(req)).instanceId).toBe(got.instanceId);
    expect(gce.instances()).toHaveLength(1);
    // Specs came from machineTypes.aggregatedList, not the snapshot.
    expect(await p.catalogOrigin()).toBe('live');
    expect(gce.calls).toContain('GET machineTypes.aggregatedList');

    // The rule goes when no cell of this controller uses its port.
    expect(await p.pruneFirewalls('ctl-gce')).toEqual([]);
    await p.terminate([got.instanceId]);
    expect(await p.pruneFirewalls('ctl-gce')).toHaveLength(1);
    expect(gce.firewalls()).toHaveLength(0);
  });

  it('with allowBetweenCells, admits pod traffic from cell to cell by tag, and removes the rule with the last cell', async () => {
    const p = make({ firewall: { allowFromTags: ['cello-controller'], allowBetweenCells: true } });
    const a = await p.launch(request('ctl-gce'));
    const between = gce.firewalls().find((f) => String(f['name']).startsWith('cello-cells-'));
    expect(between).toMatchObject({ sourceTags: ['cello-cell'], targetTags: ['cello-cell'], allowed: [{ IPProtocol: 'tcp' }, { IPProtocol: 'udp' }, { IPProtocol: 'icmp' }] });
    expect(between!['sourceRanges']).toBeUndefined();
    expect(gce.firewalls()).toHaveLength(2);
    expect(await p.pruneFirewalls('ctl-gce')).toEqual([]);
    await p.terminate([a.instanceId]);
    expect(await p.pruneFirewalls('ctl-gce')).toHaveLength(2);
    expect(gce.firewalls()).toEqual([]);
    // The next cell brings both back.
    await p.launch(request('ctl-gce'));
    expect(gce.firewalls()).toHaveLength(2);
  });

  it('gives an external IP only when configured, and then may address agents by it', async () => {
    const p = make({ externalIp: true, addressType: 'external' });
    const got = await p.launch(request('ctl-gce'));
    const nic = (instance(got.instanceId)!['networkInterfaces'] as Array<{ accessConfigs: Array<{ natIP: string; type: string }> }>)[0]!;
    expect(nic.accessConfigs[0]!.type).toBe('ONE_TO_ONE_NAT');
    const [d] = await p.describe([got.instanceId]);
    expect(d!.agentAddress).toBe(`${nic.accessConfigs[0]!.natIP}:9443`);
  });

  it('launches Spot with DELETE on preemption, moves zone by zone on exhaustion, then to standard when allowed', async () => {
    const p = make({ spot: { default: false, fallbackToStandard: true } });
    const undoA = gce.failInserts({ code: 'ZONE_RESOURCE_POOL_EXHAUSTED', zone: gce.zones[0], provisioningModel: 'SPOT' });
    const a = await p.launch(request('ctl-gce', { spot: true }));
    expect(a).toMatchObject({ zone: gce.zones[1], spot: true });
    expect(instance(a.instanceId)!['scheduling']).toMatchObject({ provisioningModel: 'SPOT', instanceTerminationAction: 'DELETE' });
    undoA();
    // Spot exhausted everywhere (a fresh provider: the first one remembers zone a said no).
    const q = make({ spot: { default: false, fallbackToStandard: true } });
    gce.failInserts({ code: 'ZONE_RESOURCE_POOL_EXHAUSTED', provisioningModel: 'SPOT' });
    const b = await q.launch(request('ctl-gce', { spot: true }));
    expect(b).toMatchObject({ zone: gce.zones[0], spot: false });
    expect(instance(b.instanceId)!['scheduling']).toMatchObject({ provisioningModel: 'STANDARD' });
    // Without the fallback a Spot launch fails as capacity, and leaves nothing behind.
    const r = make();
    const req = request('ctl-gce', { spot: true });
    const err = await r.launch(req).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapacityError);
    expect((err as Error).message).toMatch(/ZONE_RESOURCE_POOL_EXHAUSTED/);
    expect((await r.listOwned('ctl-gce')).filter((i) => i.tags['cello.io/cell-id'] === req.cellId)).toEqual([]);
  });

  it('counts regional quotas in capacity(), and a launch over the CPUS quota is a capacity refusal', async () => {
    const p = make();
    gce.setQuota('CPUS', 3);
    const before = await p.capacity();
    expect(before).toMatchObject({ instances: { limit: 24, used: 0 }, vcpus: { limit: 3, used: 0 }, source: `compute:regions.get ${gce.region}` });
    await p.launch(request('ctl-gce'));
    expect((await p.capacity()).vcpus).toEqual({ limit: 3, used: 2 });
    const err = await p.launch(request('ctl-gce')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapacityError);
    expect((err as Error).message).toMatch(/QUOTA_EXCEEDED.*CPUS/);
  });

  it('a type no zone offers (the snapshot cannot tell) is a capacity refusal after every zone said so', async () => {
    // e2-standard-16 is in the snapshot and the price file, and in no zone of the fake.
    const p = make({ liveCatalog: false });
    const err = await p.launch(request('ctl-gce', { instanceType: 'e2-standard-16' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapacityError);
    expect((err as Error).message).toMatch(/MACHINE_TYPE_NOT_IN_ZONE/);
    expect(gce.calls.filter((c) => c === 'POST instances.insert')).toHaveLength(2);
  });

  it('gives up on an operation at its deadline instead of waiting forever', async () => {
    await gce.stop();
    gce = await startGceFake({ operationMs: 60_000 });
    const p = make({ operationTimeoutSeconds: 1 });
    const t0 = Date.now();
    const err = await p.launch(request('ctl-gce')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(CapacityError);
    expect((err as Error).message).toMatch(/did not finish in time/);
    expect(Date.now() - t0).toBeLessThan(8000);
  });

  it('after a store wipe, finds and deletes its own instances by label, never another controller’s', async () => {
    const mine = make();
    const theirs = make({}, 'ctl-other');
    const a = await mine.launch(request('ctl-gce'));
    const b = await mine.launch(request('ctl-gce'));
    const other = await theirs.launch(request('ctl-other'));
    // A new controller process: no memory of what it launched, only the cloud's labels.
    const restarted = make();
    const res = await collectOrphans({ provider: restarted, controllerId: 'ctl-gce', knownCells: new Map(), minAgeMs: 0 });
    expect(res.terminated.map((t) => t.instanceId).sort()).toEqual([a.instanceId, b.instanceId].sort());
    expect(gce.instances().map((i) => String(i['name']))).toEqual([other.instanceId.split('/')[1]]);
  });

  it('runs a pod as another service account only where provider.serviceAccounts allows it', async () => {
    const p = make({
      serviceAccount: { email: 'cells@cello-test.iam.gserviceaccount.com' },
      serviceAccounts: { allowed: [{ namespaces: ['team-a'], emails: ['reader@cello-test.iam.gserviceaccount.com'] }] },
    });
    const ann = { 'cello.io/gce-service-account': 'reader@cello-test.iam.gserviceaccount.com' };
    expect(p.refusePod({ namespace: 'team-a', annotations: ann })).toBeUndefined();
    // The attacker: a pod creator in another namespace, or one asking for an account not listed.
    expect(p.refusePod({ namespace: 'team-b', annotations: ann })).toMatch(/not allowed in namespace "team-b"/);
    expect(p.refusePod({ namespace: 'team-a', annotations: { 'cello.io/gce-service-account': 'owner@cello-test.iam.gserviceaccount.com' } })).toMatch(/not allowed/);
    const sa = async (id: string) => (instance(id)!['serviceAccounts'] as Array<{ email: string }>)[0]!.email;
    const a = await p.launch(request('ctl-gce', { options: ann }));
    expect(await sa(a.instanceId)).toBe('reader@cello-test.iam.gserviceaccount.com');
    const b = await p.launch(request('ctl-gce'));
    expect(await sa(b.instanceId)).toBe('cells@cello-test.iam.gserviceaccount.com');
    // launch checks it too, whoever calls it: the pod's namespace is in its tag.
    const bad = request('ctl-gce', { options: ann });
    bad.tags['cello.io/pod'] = 'team-b/x';
    await expect(p.launch(bad)).rejects.toThrow(/not allowed in namespace "team-b"/);
    await expect(p.launch(request('ctl-gce', { options: { 'cello.io/aws-instance-profile': 'x' } }))).rejects.toThrow(/not supported by the gce provider/);
  });

  it('offers custom machine types priced per vCPU and GiB, and launches one', async () => {
    expect(() => make({ customMachineTypes: { families: ['e2'], memoryGiBPerVcpu: [9] } })).toThrow(/provider\.customMachineTypes\.memoryGiBPerVcpu\.0/);
    const p = make({ machineTypes: ['e2-standard-4'], customMachineTypes: { families: ['e2'], vcpus: [4, 40], memoryGiBPerVcpu: [1.5] } });
    const types = await p.instanceTypes();
    // 40 vCPUs is beyond E2's custom range (32): not offered.
    expect(types.map((t) => t.name).sort()).toEqual(['e2-custom-4-6144', 'e2-standard-4']);
    const custom = types.find((t) => t.name === 'e2-custom-4-6144')!;
    expect(custom).toMatchObject({ vcpus: 4, memoryMiB: 6144, arch: 'amd64', onDemandHourlyUsd: 0.104782 });
    // A pod that needs 4 vCPUs and 6 GiB: the custom shape is cheaper than e2-standard-4's 16 GiB.
    expect(custom.onDemandHourlyUsd).toBeLessThan(types.find((t) => t.name === 'e2-standard-4')!.onDemandHourlyUsd);
    const got = await p.launch(request('ctl-gce', { instanceType: 'e2-custom-4-6144' }));
    expect(String(instance(got.instanceId)!['machineType'])).toMatch(/\/machineTypes\/e2-custom-4-6144$/);
    expect((await p.capacity()).vcpus!.used).toBe(4);
    // A shape GCE would refuse is not offered at launch either.
    await expect(p.launch(request('ctl-gce', { instanceType: 'e2-custom-3-3072' }))).rejects.toBeInstanceOf(CapacityError);
  });

  it('describes unknown and malformed IDs as absent', async () => {
    const p = make();
    expect(await p.describe([`${gce.zones[0]}/cello-nope`, 'i-0123456789abcdef0', 'no/such/thing'])).toEqual([]);
  });

  it('is refused by the API without valid credentials', async () => {
    const p = make({}, 'ctl-gce', { ...gce.authClient, fetch: (url: string, init: RequestInit) => fetch(url, { ...init, headers: { authorization: 'Bearer stolen' } }) });
    await expect(p.capacity()).rejects.toThrow(/authentication|401|UNAUTHENTICATED/i);
    expect(gce.calls).toEqual([]);
  });
});

describe('gce provider configuration', () => {
  let gce: GceFake;
  beforeAll(async () => {
    gce = await startGceFake();
  });
  afterAll(() => gce.stop());
  const base = { project: 'my-project-1', zones: ['us-central1-a'], image: { amd64: 'projects/p/global/images/i' } };
  it('names the field in every error', () => {
    expect(() => parseGceProviderConfig({ ...base, zones: ['us-central1-a', 'europe-west1-b'] })).toThrow(/provider\.zones: must all be in one region/);
    expect(() => parseGceProviderConfig({ ...base, zones: ['central'] })).toThrow(/provider\.zones\.0: must be a zone/);
    expect(() => parseGceProviderConfig({ ...base, project: 'X' })).toThrow(/provider\.project: must be a project ID/);
    expect(() => parseGceProviderConfig({ ...base, image: {} })).toThrow(/provider\.image: needs amd64 and\/or arm64/);
    expect(() => parseGceProviderConfig({ ...base, addressType: 'external' })).toThrow(/provider\.addressType: addressType external needs externalIp/);
    expect(() => parseGceProviderConfig({ ...base, extraLabels: { Team: 'a' } })).toThrow(/provider\.extraLabels/);
    expect(() => parseGceProviderConfig({ ...base, subnets: ['x'] })).toThrow(/provider: Unrecognized key.*subnets/);
  });
  it('offers the dated snapshot with prices when the live catalog is off', async () => {
    const p = new GceProvider({
      config: parseGceProviderConfig({ ...base, project: gce.project, liveCatalog: false, endpoint: gce.endpoint }),
      controllerId: 'c',
      clientOptions: { authClient: gce.authClient as never },
      logger: silent,
    });
    try {
      expect(await p.catalogOrigin()).toBe('snapshot');
      const types = await p.instanceTypes();
      expect(types.find((t) => t.name === 'e2-standard-2')).toMatchObject({ vcpus: 2, memoryMiB: 8192, arch: 'amd64' });
      expect(types.find((t) => t.name === 'g2-standard-4')).toMatchObject({ gpus: 1, gpuType: 'nvidia-l4' });
      expect(types.find((t) => t.name === 't2a-standard-1')).toMatchObject({ arch: 'arm64' });
      expect(await p.architectures()).toEqual(['amd64']);
      expect(gce.calls).toEqual([]);
    } finally {
      await p.close();
    }
  });
});
