// Through the controller: the controller dies in the middle of a launch — EC2 has accepted
// RunInstances, the controller never saw the answer, so its store has no instance ID — and a
// new controller starts on the same store. There must be no second instance for the cell kept
// running and no instance leaked: at the end exactly one instance of this controller ID lives,
// and it is the one running the pod.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { PodPhase } from '@cello/proto/cell';
import { ApplyPodRequest, ControllerClient, GetPodRequest, type PodObject } from '@cello/proto/controller';
import { pushBusybox, startMoto, startRegistry, waitFor, type MotoServer, type RegistryServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControllerApi } from '../../../src/api/server.js';
import { bootstrapFnFor } from '../../../src/bootstrap/index.js';
import { AgentPool } from '../../../src/dispatch/agents.js';
import { Reconciler } from '../../../src/dispatch/reconciler.js';
import { AwsProvider, CELL_TAGS } from '../../../src/providers/aws/index.js';
import { cellServerIdentityCheck, CertificateAuthority } from '../../../src/security/index.js';
import { openStore, type Store } from '../../../src/store/index.js';
import { BootHarness } from '../../bootstrap/boot-harness.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

const CONTROLLER_ID = 'ctl-restart';
const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
let moto: MotoServer;
let world: MotoWorld;
let registry: RegistryServer;
let image: string;
let store: Store;
let storeDir: string;
let ca: CertificateAuthority;
let agents: AgentPool;
let harness: BootHarness;
const providers: AwsProvider[] = [];
const reconcilers: Reconciler[] = [];
let api: ControllerApi;
let client: ControllerClient;
const bootErrors: unknown[] = [];

function unary<Req, Res>(fn: (r: Req, md: Metadata, o: object, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}

function newProvider(): AwsProvider {
  const p = new AwsProvider({
    config: world.config({ instanceTypes: ['t3.*'] }),
    controllerId: CONTROLLER_ID,
    clientConfig: { credentials: moto.credentials },
    logger,
    testAgentAddressMap: harness.addressOf,
  });
  providers.push(p);
  return p;
}

function newReconciler(provider: AwsProvider): Reconciler {
  const r = new Reconciler({
    store,
    provider,
    controllerId: CONTROLLER_ID,
    agents,
    log: logger,
    agentPort: 7443,
    bootstrap: bootstrapFnFor(ca, { timeoutMs: 10_000, logger }),
    caCertPem: async () => ca.certPem,
    timeouts: { bootSeconds: 20 },
    tickMs: 100,
  });
  reconcilers.push(r);
  return r;
}

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  registry = await startRegistry();
  image = await pushBusybox(registry);
  storeDir = await mkdtemp(join(tmpdir(), 'cello-restart-store-'));
  store = await openStore({ kind: 'embedded', dir: storeDir });
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
  const me = await ca.issueClientCertificate('controller');
  agents = new AgentPool({
    forCell: (cellId) =>
      credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(me.keyPem), Buffer.from(me.certPem), { checkServerIdentity: cellServerIdentityCheck(cellId) }),
  });
  harness = new BootHarness(['--insecure-registry', registry.host]);
});

afterAll(async () => {
  client?.close();
  await api?.close();
  for (const r of reconcilers) await r.stop().catch(() => undefined);
  await harness?.close();
  for (const p of providers) await p.close();
  await store?.close();
  if (storeDir) await rm(storeDir, { recursive: true, force: true });
  await registry?.stop();
  await moto?.stop();
});

describe('controller killed mid-launch, then restarted', () => {
  it('leaves exactly one live instance, the one running the pod', async () => {
    // Controller 1: its RunInstances reaches EC2, but the answer never comes back to it.
    const p1 = newProvider();
    p1.ec2.middlewareStack.add(
      (next, ctx) => async (args) => {
        const out = await next(args);
        if ((ctx as { commandName?: string }).commandName === 'RunInstancesCommand') await new Promise(() => undefined);
        return out;
      },
      { step: 'deserialize', priority: 'low', name: 'testLoseRunInstancesAnswer' },
    );
    const r1 = newReconciler(p1);
    await r1.start();
    api = new ControllerApi({ store, agents, log: logger, controllerId: CONTROLLER_ID, providerName: 'aws', instanceTypes: await p1.instanceTypes() });
    client = new ControllerClient(`127.0.0.1:${await api.listen('127.0.0.1:0')}`, credentials.createInsecure());
    const p2 = newProvider();
    harness.autoBoot(p2, CONTROLLER_ID, (err) => bootErrors.push(err));

    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'survivor', namespace: 'default' },
      spec: { containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
    });
    await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
    const first = await waitFor('EC2 to have the first controller\'s instance', async () => (await p2.listOwned(CONTROLLER_ID))[0], { timeoutMs: 60_000, intervalMs: 100 });

    // The controller dies (its launch never returns); a new one starts on the same store.
    await r1.stop();
    const r2 = newReconciler(p2);
    await r2.start();

    const running = await waitFor(
      'the pod to run after the restart',
      async () => {
        if (bootErrors.length) throw bootErrors[0] as Error;
        const p = await unary<GetPodRequest, PodObject>(client.getPod.bind(client), GetPodRequest.fromPartial({ pod: { namespace: 'default', name: 'survivor' } }));
        return p.status?.phase === PodPhase.POD_PHASE_RUNNING ? p : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 250 },
    );
    // No duplicate, no leak: one live instance, the pod's.
    const live = await waitFor(
      'leftover instances to be gone',
      async () => {
        const owned = (await p2.listOwned(CONTROLLER_ID)).filter((o) => o.state === 'pending' || o.state === 'running');
        return owned.length === 1 ? owned : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    expect(live[0]!.tags[CELL_TAGS.cellId]).toBe(running.cellId);
    // Tell which path the controller took: the first instance adopted, or replaced and ended.
    logger.info({ adopted: live[0]!.instanceId === first.instanceId }, 'restart outcome');
    expect(bootErrors).toEqual([]);
  });
});
