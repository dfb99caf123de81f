// Through the controller: the real daemon (startController: API, reconciler, CA and mTLS to
// agents, bootstrap of remote cells) with the aws provider built from its configuration
// section, on the EC2 emulator. A pod applied through the API gets an instance of the selected type with the cell
// image and tags; the harness plays that instance's boot (user data from the emulator, the real
// agent on loopback, reached through the test-only address map), the reconciler bootstraps it
// with the controller CA, the pod runs under runc, and deleting the pod terminates the instance.
import { ApiAuth, apiChannelCredentials, MASTERS_GROUP } from '../../../src/api/auth/index.js';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DescribeInstancesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { ControllerClient, ApplyPodRequest, GetPodRequest, DeletePodRequest, type PodObject } from '@cello/proto/controller';
import { PodPhase } from '@cello/proto/cell';
import { pushBusybox, startMoto, startRegistry, waitFor, type MotoServer, type RegistryServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControllerApi } from '../../../src/api/server.js';
import { parseConfig } from '../../../src/config.js';
import { startController, type ControllerHandle } from '../../../src/daemon.js';
import { bootstrapFnFor } from '../../../src/bootstrap/index.js';
import { AgentPool } from '../../../src/agents/pool.js';
import { Reconciler, type ReconcilerOptions } from '../../../src/reconcile/reconciler.js';
import { AwsProvider, awsProviderFromConfig, CELL_TAGS } from '../../../src/providers/aws/index.js';
import { BootstrapTokens, cellServerIdentityCheck, CertificateAuthority, SecretBox } from '../../../src/security/index.js';
import { openStore, type Store } from '../../../src/store/index.js';
import { BootHarness } from '../../bootstrap/boot-harness.js';
import { injectEc2Faults, type FaultLog } from './fault-injection.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

const CONTROLLER_ID = 'ctl-e2e';
const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
let moto: MotoServer;
let world: MotoWorld;
let registry: RegistryServer;
let image: string;
let store: Store;
let storeDir: string;
let provider: AwsProvider;
let handle: ControllerHandle | undefined;
let agents: AgentPool;
let ca: CertificateAuthority;
let client: ControllerClient;
/** A second API replica of the test, plaintext on loopback: explicitly so, and only its anonymous caller is allowed. */
const plaintextApi = () => new ApiAuth({ insecure: true, policy: [{ users: ['system:anonymous'], groups: [], namespaces: ['*'], verbs: ['*'], resources: ['*'] }] });
let raw: EC2Client;
let harness: BootHarness;
const bootErrors: unknown[] = [];
// Capacity faults on the controller's own EC2 client (moto has no capacity shortages): while
// `noCapacityFor` names a type, RunInstances for it fails with InsufficientInstanceCapacity.
let noCapacityFor: string | undefined;
let faults: FaultLog;
let firstType: string | undefined;

function unary<Req, Res>(fn: (r: Req, md: Metadata, o: object, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  registry = await startRegistry();
  image = await pushBusybox(registry);
  storeDir = await mkdtemp(join(tmpdir(), 'cello-e2e-store-'));
  store = await openStore({ kind: 'embedded', dir: storeDir });
  const caKey = randomBytes(32).toString('hex');
  process.env['CELLO_E2E_CA_KEY'] = caKey;
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: caKey });
  harness = new BootHarness(['--insecure-registry', registry.host]);
  const awsSection = world.config();
  const config = parseConfig({
    controllerId: CONTROLLER_ID,
    api: { listen: '127.0.0.1:0' },
    metrics: { listen: '127.0.0.1:0' },
    provider: {
      kind: 'aws',
      region: awsSection.region,
      endpoint: awsSection.endpoint,
      image: awsSection.image,
      subnets: awsSection.subnets,
      cellSecurityGroup: awsSection.cellSecurityGroup,
      instanceTypes: ['t3.*'],
      liveCatalog: false,
      maxAttempts: 4,
    },
    security: { mode: 'mtls', encryptionKeyEnv: 'CELLO_E2E_CA_KEY' },
  });
  // The provider as the daemon builds it from its `provider:` section, plus the test-only
  // address map (not configurable, by design) and the emulator's static credentials.
  provider = awsProviderFromConfig(config.provider as Record<string, unknown>, {
    controllerId: CONTROLLER_ID,
    clientConfig: { credentials: moto.credentials },
    logger,
    testAgentAddressMap: harness.addressOf,
  });
  faults = injectEc2Faults(provider.ec2, [{ command: 'RunInstances', when: (i) => i['InstanceType'] === noCapacityFor, code: 'InsufficientInstanceCapacity' }]);
  // The reconcilers below act as the controller, and agents serve only the controller's identity.
  const me = await ca.issueClientCertificate('controller');
  agents = new AgentPool({
    forCell: (cellId) => credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(me.keyPem), Buffer.from(me.certPem), { checkServerIdentity: cellServerIdentityCheck(cellId) }),
  });
  handle = await startController(config, { log: logger, provider, store, tickMs: 100 });
  const admin = await ca.issueUserCertificate('e2e-admin', { groups: [MASTERS_GROUP] });
  client = new ControllerClient(`127.0.0.1:${handle.apiPort}`, apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain, ...admin }));
  raw = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
  harness.autoBoot(provider, CONTROLLER_ID, (err) => bootErrors.push(err));
});

afterAll(async () => {
  // Every step runs even if an earlier one fails: nothing started here may outlive the test.
  const steps: Array<() => unknown> = [
    () => client?.close(),
    () => handle?.stop().catch(() => undefined),
    () => harness?.close(),
    () => raw?.destroy(),
    () => store?.close(),
    () => storeDir && rm(storeDir, { recursive: true, force: true }),
    () => registry?.stop(),
    () => moto?.stop(),
    () => void delete process.env['CELLO_E2E_CA_KEY'],
  ];
  for (const step of steps)
    await Promise.resolve()
      .then(step)
      .catch((err: unknown) => console.error(`cleanup: ${(err as Error).message}`));
});

describe('the controller on EC2 (emulated)', () => {
  it('apply -> an instance of the selected type runs the pod; delete -> the instance is terminated', async () => {
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web', namespace: 'default' },
      spec: {
        restartPolicy: 'Never',
        containers: [{ name: 'main', image, command: ['sh', '-c', 'echo hello from a cell; sleep 3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }],
      },
    });
    await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
    const running = await waitRunning(client, 'web', 'the pod to run on its EC2 cell', { timeoutMs: 90_000, errors: bootErrors });
    expect(running.cellId).toMatch(/./);
    expect(running.instanceType).toMatch(/^t3\./);
    firstType = running.instanceType;

    const owned = await provider.listOwned(CONTROLLER_ID);
    const mine = owned.filter((o) => o.tags[CELL_TAGS.cellId] === running.cellId);
    expect(mine).toHaveLength(1);
    const r = await raw.send(new DescribeInstancesCommand({ InstanceIds: [mine[0]!.instanceId] }));
    const inst = r.Reservations![0]!.Instances![0]!;
    expect(inst.InstanceType).toBe(running.instanceType);
    expect(inst.ImageId).toBe(world.imageId);
    expect(inst.MetadataOptions?.HttpTokens).toBe('required');
    const tags = Object.fromEntries((inst.Tags ?? []).map((t) => [t.Key, t.Value]));
    expect(tags).toMatchObject({ [CELL_TAGS.controllerId]: CONTROLLER_ID, [CELL_TAGS.cellId]: running.cellId });

    await unary(client.deletePod.bind(client), DeletePodRequest.fromPartial({ pod: { namespace: 'default', name: 'web' }, gracePeriodSeconds: 1 }));
    await waitFor(
      'the cell instance to be terminated',
      async () => {
        const d = await raw.send(new DescribeInstancesCommand({ InstanceIds: [inst.InstanceId!] }));
        const st = d.Reservations![0]!.Instances![0]!.State?.Name;
        return st === 'terminated' || st === 'shutting-down';
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    expect(bootErrors).toEqual([]);
  });

  it('no capacity for the selected type in any zone: the controller falls back to the next candidate', async () => {
    expect(firstType).toBeDefined();
    noCapacityFor = firstType;
    try {
      const manifest = JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'fallback', namespace: 'default' },
        spec: { restartPolicy: 'Never', containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
      });
      await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
      const running = await waitRunning(client, 'fallback', 'the pod to run on a fallback type', { timeoutMs: 90_000 });
      expect(running.instanceType).not.toBe(firstType);
      // Both zones were tried for the selected type before the controller moved on.
      expect(faults.count('RunInstances', (i) => i['InstanceType'] === firstType)).toBeGreaterThanOrEqual(3); // the first pod's launch + both zones now
      expect(
        faults.calls
          .filter((c) => c.command === 'RunInstances' && c.injected)
          .map((c) => c.input['SubnetId'])
          .sort(),
      ).toEqual(expect.arrayContaining(world.subnets.map((x) => x.id).sort()));
      await unary(client.deletePod.bind(client), DeletePodRequest.fromPartial({ pod: { namespace: 'default', name: 'fallback' }, gracePeriodSeconds: 1 }));
    } finally {
      noCapacityFor = undefined;
    }
  });

  it('a pod that requires spot gets a one-time spot instance', async () => {
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'spotty', namespace: 'default', annotations: { 'cello.io/spot': 'required' } },
      spec: { restartPolicy: 'Never', containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
    });
    await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
    const running = await waitRunning(client, 'spotty', 'the spot pod to run', { timeoutMs: 90_000 });
    const [inst] = (await provider.listOwned(CONTROLLER_ID)).filter((o) => o.tags[CELL_TAGS.cellId] === running.cellId);
    expect(inst?.spot).toBe(true);
    const run = faults.calls.filter((c) => c.command === 'RunInstances' && !c.injected).at(-1)!;
    expect(run.input['InstanceMarketOptions']).toEqual({ MarketType: 'spot', SpotOptions: { SpotInstanceType: 'one-time', InstanceInterruptionBehavior: 'terminate' } });
    await unary(client.deletePod.bind(client), DeletePodRequest.fromPartial({ pod: { namespace: 'default', name: 'spotty' }, gracePeriodSeconds: 1 }));
  });

  it('after a store wipe the collector terminates what this controller ID owns, and nothing else', async () => {
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kept', namespace: 'default' },
      spec: { containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '50m', memory: '32Mi' } } }] },
    });
    await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
    const running = await waitRunning(client, 'kept', 'the pod to run', { timeoutMs: 90_000 });
    const ours = (await provider.listOwned(CONTROLLER_ID)).filter((o) => o.tags[CELL_TAGS.cellId] === running.cellId);
    expect(ours).toHaveLength(1);
    // Another controller's instance in the same account.
    const other = new AwsProvider({ config: world.config(), controllerId: 'ctl-other', clientConfig: { credentials: moto.credentials }, logger });
    const theirs = await other.launch({
      cellId: 'cell-other1',
      instanceType: 't3.small',
      spot: false,
      tags: { [CELL_TAGS.controllerId]: 'ctl-other', [CELL_TAGS.cellId]: 'cell-other1' },
      bootstrap: {
        caCertPem: ca.certPem,
        token: 'cbt_other-token-000000000000',
        tokenExpiresAt: new Date(Date.now() + 60_000).toISOString(),
        controllerId: 'ctl-other',
        cellId: 'cell-other1',
        agentPort: 7443,
      },
    });
    await other.close();

    // The store is lost: a controller with the same ID starts on an empty one.
    await handle!.stop();
    handle = undefined;
    const p3 = new AwsProvider({
      config: world.config({ instanceTypes: ['t3.*'] }),
      controllerId: CONTROLLER_ID,
      clientConfig: { credentials: moto.credentials },
      logger,
      testAgentAddressMap: harness.addressOf,
    });
    const wipedDir = await mkdtemp(join(tmpdir(), 'cello-e2e-wiped-'));
    const wiped = await openStore({ kind: 'embedded', dir: wipedDir });
    try {
      const fresh = new Reconciler({ store: wiped, provider: p3, controllerId: CONTROLLER_ID, agents, log: logger, tickMs: 100 });
      const collected = await fresh.collectGarbage();
      expect(collected).toContain(ours[0]!.instanceId);
      expect(collected).not.toContain(theirs.instanceId);
      const state = async (id: string) => (await raw.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).Reservations![0]!.Instances![0]!.State?.Name;
      expect(await state(ours[0]!.instanceId)).toMatch(/terminated|shutting-down/);
      expect(await state(theirs.instanceId)).toBe('running');
      expect(await p3.listOwned(CONTROLLER_ID)).toEqual([]);
    } finally {
      await p3.close();
      await wiped.close();
      await rm(wipedDir, { recursive: true, force: true });
    }
  });

  it('a controller that dies mid-launch and restarts on the same store leaves one live instance, running the pod', async () => {
    const c = await ownController('ctl-restart');
    const errors: unknown[] = [];
    // What this test relies on: a boot deadline short enough (12 s) for the successor to act on the lost launch.
    const reconciler = (p: AwsProvider) => c.newReconciler(p, { bootstrap: bootstrapFnFor(ca, { timeoutMs: 10_000, logger }), timeouts: { bootSeconds: 12 } });
    try {
      // Controller 1: its RunInstances reaches EC2, but the answer never comes back to it.
      const p1 = c.newProvider();
      p1.ec2.middlewareStack.add(
        (next, ctx) => async (args) => {
          const out = await next(args);
          if ((ctx as { commandName?: string }).commandName === 'RunInstancesCommand') await new Promise(() => undefined);
          return out;
        },
        { step: 'deserialize', priority: 'low', name: 'testLoseRunInstancesAnswer' },
      );
      const r1 = reconciler(p1);
      await r1.start();
      const p2 = c.newProvider();
      c.harness.autoBoot(p2, c.id, (err) => errors.push(err));
      const manifest = JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'survivor', namespace: 'default' },
        spec: { containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
      });
      await unary(c.client.applyPod.bind(c.client), ApplyPodRequest.fromPartial({ manifest }));
      const first = await waitFor("EC2 to have the first controller's instance", async () => (await p2.listOwned(c.id))[0], { timeoutMs: 60_000, intervalMs: 100 });

      // The controller dies (its launch never returns); a new one starts on the same store.
      await r1.stop();
      await reconciler(p2).start();
      const running = await waitRunning(c.client, 'survivor', 'the pod to run after the restart', { timeoutMs: 120_000, errors });
      // No duplicate, no leak: exactly one live instance of this controller ID, the pod's.
      const live = await waitFor(
        'leftover instances to be gone',
        async () => {
          const owned = (await p2.listOwned(c.id)).filter((o) => o.state === 'pending' || o.state === 'running');
          return owned.length === 1 ? owned : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      );
      expect(live[0]!.tags[CELL_TAGS.cellId]).toBe(running.cellId);
      // Which path the controller took (adopt the first instance, or replace it and end it) is the reconciler's choice.
      logger.info({ adopted: live[0]!.instanceId === first.instanceId }, 'restart outcome');
      expect(errors).toEqual([]);
    } finally {
      await c.close();
    }
  });

  it('a controller that dies mid-bootstrap (the agent already sent its CSR) is succeeded by one that finishes the bootstrap of the same instance', async () => {
    const c = await ownController('ctl-adopt');
    const box = new SecretBox(randomBytes(32));
    const errors: unknown[] = [];
    // Controller 1 gets as far as the agent's CSR, then never signs it (it "dies" there).
    let reachedCsr!: () => void;
    const csrSeen = new Promise<void>((r) => (reachedCsr = r));
    const stuck = { certPem: ca.certPem, signCsr: () => (reachedCsr(), new Promise<string>(() => undefined)) };
    // What this test relies on: the bootstrap token kept in the store (hashed) and in the cell record
    // (sealed with `box`), so the successor can finish the bootstrap; a boot deadline (60 s) it meets.
    const reconciler = (p: AwsProvider, signer: Parameters<typeof bootstrapFnFor>[0]) =>
      c.newReconciler(p, {
        bootstrap: bootstrapFnFor(signer, { timeoutMs: 10_000, logger }),
        tokens: new BootstrapTokens(c.store),
        secretBox: box,
        timeouts: { bootSeconds: 60 },
      });
    try {
      const p1 = c.newProvider();
      const r1 = reconciler(p1, stuck);
      await r1.start();
      c.harness.autoBoot(p1, c.id, (err) => errors.push(err));
      const manifest = JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'adopted', namespace: 'default' },
        spec: { containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
      });
      await unary(c.client.applyPod.bind(c.client), ApplyPodRequest.fromPartial({ manifest }));
      await within(csrSeen, 60_000, 'the first controller to receive the agent CSR');
      const [first] = await p1.listOwned(c.id);
      const cellId = first!.tags[CELL_TAGS.cellId]!;
      // The token is in the store only hashed, and in the cell record only sealed.
      expect((await c.store.get(`security/bootstrap-tokens/${cellId}`))?.value).toHaveProperty('sha256');
      const rec = (await c.store.get<Record<string, unknown>>(`cells/${cellId}`))!.value;
      expect(rec['bootstrapToken']).toBeUndefined();
      expect(rec['sealedBootstrapToken']).toHaveProperty('dek');

      // Controller 1 dies; controller 2 starts on the same store and finishes the bootstrap.
      await r1.stop();
      await reconciler(c.newProvider(), ca).start();
      const running = await waitRunning(c.client, 'adopted', 'the pod to run on the adopted instance', { timeoutMs: 120_000, errors });
      // Adopted, not replaced: the same cell on the same instance, and it is the only one.
      expect(running.cellId).toBe(cellId);
      const live = (await p1.listOwned(c.id)).filter((o) => o.state === 'pending' || o.state === 'running');
      expect(live.map((o) => o.instanceId)).toEqual([first!.instanceId]);
      // The token was consumed once the certificate was in place; nothing of it is left.
      expect(await c.store.get(`security/bootstrap-tokens/${cellId}`)).toBeUndefined();
      expect((await c.store.get<Record<string, unknown>>(`cells/${cellId}`))!.value['sealedBootstrapToken']).toBeUndefined();
      expect(errors).toEqual([]);
    } finally {
      await c.close();
    }
  }, 240_000);
});

/** Waits for the pod to run; with `errors` (a boot harness's), fails at once on the first of them. */
function waitRunning(c: ControllerClient, name: string, what: string, o: { timeoutMs: number; errors?: unknown[] }): Promise<PodObject> {
  return waitFor(
    what,
    async () => {
      if (o.errors?.length) throw o.errors[0] as Error;
      const p = await unary<GetPodRequest, PodObject>(c.getPod.bind(c), GetPodRequest.fromPartial({ pod: { namespace: 'default', name } }));
      return p.status?.phase === PodPhase.POD_PHASE_RUNNING ? p : undefined;
    },
    { timeoutMs: o.timeoutMs, intervalMs: 250 },
  );
}

/**
 * A controller of the test's own, on its own controller ID and store (sharing the emulator,
 * registry, CA and agent pool): an API replica (plaintext on loopback) and a boot harness, and
 * the providers and reconcilers the test makes. A reconciler gets what every controller here
 * has; the test passes what it relies on (bootstrap, tokens, sealing, boot deadline).
 * close() stops all of it and terminates what the ID still owns.
 */
async function ownController(id: string) {
  const dir = await mkdtemp(join(tmpdir(), `cello-${id}-store-`));
  const store = await openStore({ kind: 'embedded', dir });
  const harness = new BootHarness(['--insecure-registry', registry.host]);
  const providers: AwsProvider[] = [];
  const reconcilers: Reconciler[] = [];
  const newProvider = () => {
    const p = new AwsProvider({
      config: world.config({ instanceTypes: ['t3.*'] }),
      controllerId: id,
      clientConfig: { credentials: moto.credentials },
      logger,
      testAgentAddressMap: harness.addressOf,
    });
    providers.push(p);
    return p;
  };
  const newReconciler = (provider: AwsProvider, o: Pick<ReconcilerOptions, 'bootstrap' | 'timeouts' | 'tokens' | 'secretBox'>) => {
    const r = new Reconciler({ store, provider, controllerId: id, agents, log: logger, agentPort: 7443, caCertPem: async () => ca.certPem, tickMs: 100, ...o });
    reconcilers.push(r);
    return r;
  };
  const api = new ControllerApi({
    store,
    agents,
    log: logger,
    controllerId: id,
    providerName: 'aws',
    instanceTypes: await newProvider().instanceTypes(),
    auth: plaintextApi(),
  });
  const client = new ControllerClient(`127.0.0.1:${await api.listen('127.0.0.1:0')}`, credentials.createInsecure());
  const close = async () => {
    client.close();
    await api.close();
    for (const r of reconcilers) await r.stop().catch(() => undefined);
    await harness.close();
    for (const p of providers) {
      const owned = await p.listOwned(id).catch(() => []);
      if (owned.length) await p.terminate(owned.map((o) => o.instanceId)).catch(() => undefined);
      await p.close();
    }
    await store.close();
    await rm(dir, { recursive: true, force: true });
  };
  return { id, store, harness, client, newProvider, newReconciler, close };
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} did not happen within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
