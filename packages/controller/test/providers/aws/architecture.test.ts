// Architecture-aware selection through the reconciler: the real reconciler and API with the
// embedded store, the aws provider on the EC2 emulator (moto) with an unpinned catalog (the
// cheapest fit for a small pod is then arm64, t4g.nano), and a real registry holding an
// amd64-only image, an arm64-only image and a multi-arch index. The cells are never booted: what
// is checked is the type and the image (AMI) launched, or the pod's Unschedulable condition.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { CopyImageCommand, DescribeImagesCommand, DescribeInstancesCommand, EC2Client, type Instance } from '@aws-sdk/client-ec2';
import { ConditionStatus } from '@cello/proto/cell';
import { startMoto, startRegistry, startRequestLog, waitFor, type MotoServer, type RegistryServer, type RequestLog } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControllerApi } from '../../../src/api/server.js';
import { Events } from '../../../src/cells/schema.js';
import { AgentPool } from '../../../src/agents/pool.js';
import { Reconciler } from '../../../src/reconcile/reconciler.js';
import { silentLogger } from '../../../src/obs/logger.js';
import { AwsProvider, CELL_TAGS, type AwsProviderConfig } from '../../../src/providers/aws/index.js';
import { ImagePlatformReader } from '../../../src/selection/image-platforms.js';
import { createRegistryClientFactory } from '../../../src/selection/registry-client.js';
import { openStore, type Store } from '../../../src/store/index.js';
import { pushPlatformImages, type PlatformImages } from '../../selection/image-fixtures.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

/** AMIs moto ships with (amis.json), one of each architecture. */
const MOTO_X86_AMI = 'ami-000c540e28953ace2';
const MOTO_ARM_AMI = 'ami-0e9271c829888680e';
const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n';

let moto: MotoServer;
let world: MotoWorld;
let raw: EC2Client;
let registry: RegistryServer;
let relay: RequestLog;
let images: PlatformImages;
let armAmi: string;
let x86Ami: string;

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  raw = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
  // A name-filtered cell image published for both architectures. moto's RegisterImage drops
  // Architecture, its CopyImage keeps the source's: copies of two of its bundled AMIs.
  const copy = async (source: string, name: string) => (await raw.send(new CopyImageCommand({ SourceImageId: source, SourceRegion: moto.region, Name: name }))).ImageId!;
  x86Ami = await copy(MOTO_X86_AMI, 'cello-arch-cell-x86');
  armAmi = await copy(MOTO_ARM_AMI, 'cello-arch-cell-arm');
  const d = await raw.send(new DescribeImagesCommand({ ImageIds: [x86Ami, armAmi] }));
  expect(Object.fromEntries((d.Images ?? []).map((i) => [i.ImageId, i.Architecture]))).toEqual({ [x86Ami]: 'x86_64', [armAmi]: 'arm64' });
  registry = await startRegistry();
  relay = await startRequestLog(registry.url);
  images = await pushPlatformImages(registry, relay.host);
});

afterAll(async () => {
  raw?.destroy();
  await relay?.stop();
  await registry?.stop();
  await moto?.stop();
});

/** A controller (reconciler + API) on its own store, with the aws provider as configured. */
async function controller(config: AwsProviderConfig, id: string) {
  const dir = mkdtempSync(join(tmpdir(), `cello-arch-${id}-`));
  const store: Store = await openStore({ kind: 'embedded', dir });
  const provider = new AwsProvider({ config, controllerId: id, clientConfig: { credentials: moto.credentials }, logger: pino({ level: 'silent' }) });
  const agents = new AgentPool({ forCell: () => credentials.createInsecure() });
  const imagePlatforms = new ImagePlatformReader({ clients: createRegistryClientFactory({ plainHttp: [relay.host] }), timeoutMs: 3000 });
  const bootstrap = async () => {
    throw new Error('no agent in this test');
  };
  const rec = new Reconciler({ store, provider, controllerId: id, agents, log: silentLogger(), tickMs: 100, caCertPem: async () => CA_PEM, bootstrap, imagePlatforms });
  const api = new ControllerApi({ store, agents, log: silentLogger(), controllerId: id, providerName: provider.name, instanceTypes: await provider.instanceTypes() });
  await rec.start();
  return {
    api,
    store,
    provider,
    async stop() {
      await rec.stop();
      await imagePlatforms.close();
      await provider.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
type Controller = Awaited<ReturnType<typeof controller>>;

const pod = (name: string, image: string, extra = '') => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: default }
spec:
  initContainers: [{ name: init, image: ${image} }]
  containers: [{ name: main, image: ${image} }]
${extra}`;

async function launched(ref: string): Promise<Instance> {
  return waitFor(
    `an instance for ${ref}`,
    async () => {
      const r = await raw.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${CELL_TAGS.pod}`, Values: [ref] }] }));
      return (r.Reservations ?? []).flatMap((x) => x.Instances ?? [])[0];
    },
    { timeoutMs: 20_000, intervalMs: 200 },
  );
}

async function unschedulable(c: Controller, name: string): Promise<string> {
  const p = await waitFor(
    `${name} reported Unschedulable`,
    async () => {
      const x = await c.api.getPod({ namespace: 'default', name });
      const k = x.status?.conditions.find((q) => q.type === 'PodScheduled');
      return k?.status === ConditionStatus.CONDITION_STATUS_FALSE && k.reason === 'Unschedulable' ? x : undefined;
    },
    { timeoutMs: 20_000, intervalMs: 100 },
  );
  expect(p.cellId).toBe('');
  return p.status!.conditions.find((q) => q.type === 'PodScheduled')!.message;
}

async function cheapest(c: Controller, arch: string): Promise<number> {
  const types = (await c.provider.instanceTypes()).filter((t) => t.arch === arch && t.gpus === 0);
  return Math.min(...types.map((t) => t.onDemandHourlyUsd));
}

describe('with an amd64 cell image only (image.id), unpinned catalog', () => {
  let c: Controller;
  beforeAll(async () => {
    c = await controller(world.config({ image: { id: x86Ami } }), 'ctl-arch-a');
  });
  afterAll(async () => c?.stop());

  it('the provider says it can run amd64 only', async () => {
    expect(await c.provider.architectures()).toEqual(['amd64']);
  });

  it('an amd64-only image: the cheapest amd64 type, never t4g, with the x86 AMI', async () => {
    await c.api.applyPod({ manifest: pod('amd', images.amd64), namespace: '', dryRun: false });
    const i = await launched('default/amd');
    expect(i.ImageId).toBe(x86Ami);
    const p = await c.api.getPod({ namespace: 'default', name: 'amd' });
    const t = (await c.provider.instanceTypes()).find((x) => x.name === p.instanceType)!;
    expect(t.arch).toBe('amd64');
    expect(i.InstanceType).toBe(t.name);
    expect(t.onDemandHourlyUsd).toBe(await cheapest(c, 'amd64'));
    // Without the images' platforms the cheapest fit would have been arm64: the test means something.
    expect(await cheapest(c, 'arm64')).toBeLessThan(t.onDemandHourlyUsd);
  });

  it('an arm64-only image with no arm64 cell image: Unschedulable naming the image and its platform, nothing launched', async () => {
    await c.api.applyPod({ manifest: pod('arm', images.arm64), namespace: '', dryRun: false });
    const msg = await unschedulable(c, 'arm');
    expect(msg).toBe(`NoMatchingArchitecture: no cell architecture can run this pod: image ${images.arm64} is linux/arm64; this provider has cell images for amd64`);
    const events = await new Events(c.store).list({ namespace: 'default', name: 'arm' }, 0);
    expect(events.map((e) => `${e.reason}: ${e.message}`)).toContain(`FailedScheduling: ${msg}`);
    const r = await raw.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${CELL_TAGS.pod}`, Values: ['default/arm'] }] }));
    expect((r.Reservations ?? []).flatMap((x) => x.Instances ?? [])).toEqual([]);
  });
});

describe('with cell images for both architectures (a name filter), unpinned catalog', () => {
  let c: Controller;
  beforeAll(async () => {
    c = await controller(world.config({ image: { name: 'cello-arch-cell-*', owners: ['self', '123456789012'] } }), 'ctl-arch-b');
  });
  afterAll(async () => c?.stop());

  it('the provider says it can run both', async () => {
    expect(await c.provider.architectures()).toEqual(['amd64', 'arm64']);
  });

  it('arm64 only for an image with an arm64 manifest: the arm64-only image gets an arm64 type and the arm64 AMI', async () => {
    await c.api.applyPod({ manifest: pod('b-arm', images.arm64), namespace: '', dryRun: false });
    const i = await launched('default/b-arm');
    expect(i.ImageId).toBe(armAmi);
    const p = await c.api.getPod({ namespace: 'default', name: 'b-arm' });
    const t = (await c.provider.instanceTypes()).find((x) => x.name === p.instanceType)!;
    expect(t.arch).toBe('arm64');
    expect(t.onDemandHourlyUsd).toBe(await cheapest(c, 'arm64'));
  });

  it('the amd64-only image still gets amd64 (the cheaper arm64 type is refused)', async () => {
    await c.api.applyPod({ manifest: pod('b-amd', images.amd64), namespace: '', dryRun: false });
    const i = await launched('default/b-amd');
    expect(i.ImageId).toBe(x86Ami);
    const p = await c.api.getPod({ namespace: 'default', name: 'b-amd' });
    expect((await c.provider.instanceTypes()).find((x) => x.name === p.instanceType)!.arch).toBe('amd64');
  });

  it('the multi-arch index may take the cheapest type of either: arm64 here', async () => {
    await c.api.applyPod({ manifest: pod('multi', images.multi), namespace: '', dryRun: false });
    const i = await launched('default/multi');
    expect(i.ImageId).toBe(armAmi);
  });

  it('nodeSelector kubernetes.io/arch: arm64 with an amd64-only image: Unschedulable with both named', async () => {
    await c.api.applyPod({ manifest: pod('sel', images.amd64, '  nodeSelector: { kubernetes.io/arch: arm64 }\n'), namespace: '', dryRun: false });
    expect(await unschedulable(c, 'sel')).toBe(
      `NoMatchingArchitecture: no cell architecture can run this pod: nodeSelector kubernetes.io/arch: arm64; image ${images.amd64} is linux/amd64; this provider has cell images for amd64, arm64`,
    );
  });

  it('required node affinity on kubernetes.io/arch counts too: arm64 with an amd64-only image is Unschedulable', async () => {
    const affinity =
      '  affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: kubernetes.io/arch, operator: In, values: [arm64] }] }] } } }\n';
    await c.api.applyPod({ manifest: pod('aff', images.amd64, affinity), namespace: '', dryRun: false });
    expect(await unschedulable(c, 'aff')).toBe(
      `NoMatchingArchitecture: no cell architecture can run this pod: required node affinity allows arm64; image ${images.amd64} is linux/amd64; this provider has cell images for amd64, arm64`,
    );
    // The same affinity with the multi-arch index: an arm64 cell.
    await c.api.applyPod({ manifest: pod('aff-multi', images.multi, affinity), namespace: '', dryRun: false });
    expect((await launched('default/aff-multi')).ImageId).toBe(armAmi);
  });

  it('nodeSelector kubernetes.io/arch: amd64 with the multi-arch index: amd64', async () => {
    await c.api.applyPod({ manifest: pod('sel-amd', images.multi, '  nodeSelector: { kubernetes.io/arch: amd64 }\n'), namespace: '', dryRun: false });
    expect((await launched('default/sel-amd')).ImageId).toBe(x86Ami);
  });

  it('a registry outage: Unschedulable ImagePlatformsUnknown, retried with back-off, scheduled once the registry is back', async () => {
    relay.down = true;
    try {
      // An image (the index's arm64 entry, by its tag) no cache knows: the registry must answer.
      await c.api.applyPod({ manifest: pod('outage', `${relay.host}/arch/multi:arm64`), namespace: '', dryRun: false });
      const msg = await unschedulable(c, 'outage');
      expect(msg).toMatch(new RegExp(`^ImagePlatformsUnknown: reading the platforms of ${relay.host}/arch/multi:arm64: .*HTTP 503`));
      const asked = relay.count(/multi\/manifests\/arm64/);
      // Asked again, with back-off: the pod is not given up on.
      await waitFor('a retry', () => relay.count(/multi\/manifests\/arm64/) >= asked + 2, { timeoutMs: 15_000, intervalMs: 100 });
    } finally {
      relay.down = false;
    }
    expect((await launched('default/outage')).ImageId).toBe(armAmi);
  });
});
