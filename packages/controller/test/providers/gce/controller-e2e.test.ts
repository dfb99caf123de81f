// Through the controller on Compute Engine (the GCE fake of @cello/testkit: no emulator exists):
// the real daemon with the gce provider built from its `provider: {kind: gce}` section. A pod
// applied with cellctl (dist, a child process) gets a VM; the harness plays that VM's boot as GCE would run the cell
// image: the fake starts the instance's metadata server and the real agent starts with
// `serve --gce-metadata-url`, reading its one-time-token bootstrap from the "user-data"
// attribute (Metadata-Flavor: Google) on loopback. The controller bootstraps it with its CA,
// the pod runs under runc, deleting the pod deletes the VM, and a Spot VM's preemption notice
// (instance/preempted) moves the pod to a new cell.
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { ControllerClient, ApplyPodRequest, GetPodRequest, DeletePodRequest, type PodObject } from '@cello/proto/controller';
import { PodPhase } from '@cello/proto/cell';
import { freePort, pushBusybox, startGceFake, startRegistry, waitFor, type GceFake, type RegistryServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiChannelCredentials, MASTERS_GROUP } from '../../../src/api/auth/index.js';
import { parseConfig } from '../../../src/config.js';
import { startController, type ControllerHandle } from '../../../src/daemon.js';
import { gceProviderFromConfig, type GceProvider } from '../../../src/providers/gce/index.js';
import { CertificateAuthority } from '../../../src/security/index.js';
import { openStore, type Store } from '../../../src/store/index.js';
import { agentCli, endInstance } from '../../bootstrap/boot-harness.js';
import { CELLCTL_BIN } from '../../helpers/cluster.js';

const CONTROLLER_ID = 'ctl-gce-e2e';
const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
let gce: GceFake;
let registry: RegistryServer;
let image: string;
let store: Store;
let storeDir: string;
let provider: GceProvider;
let handle: ControllerHandle | undefined;
let client: ControllerClient;
const bootErrors: unknown[] = [];

/** Plays the boot of each running VM of this controller: its metadata server, then the real agent reading it. */
class GceBootHarness {
  readonly addresses = new Map<string, string>();
  private readonly agents: Array<{ child: ChildProcess; dir: string; cellId: string; exited: Promise<void> }> = [];
  private stopped = false;
  private loop: Promise<void> = Promise.resolve();

  addressOf = (instanceId: string): string | undefined => this.addresses.get(instanceId);

  start(p: GceProvider): void {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          for (const i of await p.listOwned(CONTROLLER_ID)) {
            if (!this.stopped && i.state === 'running' && !this.addresses.has(i.instanceId)) await this.boot(i.instanceId, i.tags['cello.io/cell-id']!);
          }
        } catch (err) {
          if (!this.stopped) bootErrors.push(err);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
  }

  private async boot(instanceId: string, cellId: string): Promise<void> {
    const metadataUrl = await gce.bootMetadata(instanceId);
    const dir = await mkdtemp(join(tmpdir(), 'cello-gce-vm-'));
    const address = `127.0.0.1:${await freePort()}`;
    this.addresses.set(instanceId, address);
    const child = spawn(
      process.execPath,
      [
        agentCli(),
        'serve',
        '--listen',
        address,
        '--state-dir',
        join(dir, 'state'),
        '--gce-metadata-url',
        metadataUrl,
        '--cgroup-parent',
        `/cello-test/${cellId}`,
        '--insecure-registry',
        registry.host,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CELLO_LOG_LEVEL: process.env['LOG_LEVEL'] ?? 'warn' } },
    );
    let err = '';
    child.stdout!.resume();
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.once('exit', (code, sig) => {
      if (!this.stopped && sig !== 'SIGKILL') bootErrors.push(new Error(`agent of ${instanceId} exited ${code}: ${err}`));
    });
    this.agents.push({ child, dir, cellId, exited });
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.loop;
    for (const a of this.agents) {
      if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
      await a.exited;
      endInstance(a.dir, a.cellId);
      await rm(a.dir, { recursive: true, force: true });
    }
  }
}
const harness = new GceBootHarness();

function unary<Req, Res>(fn: (r: Req, md: Metadata, o: object, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}
const getPod = (name: string) => unary<GetPodRequest, PodObject>(client.getPod.bind(client), GetPodRequest.fromPartial({ pod: { namespace: 'default', name } }));
const waitRunning = (name: string, notOn?: string) =>
  waitFor(
    `pod ${name} to run${notOn ? ` on a cell other than ${notOn}` : ''}`,
    async () => {
      if (bootErrors.length) throw bootErrors[0] as Error;
      const p = await getPod(name);
      return p.status?.phase === PodPhase.POD_PHASE_RUNNING && p.cellId !== notOn ? p : undefined;
    },
    { timeoutMs: 90_000, intervalMs: 250 },
  );
/** cellctl (dist) as a user runs it, with the admin credentials the controller wrote. */
function cellctl(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CELLCTL_BIN, ...args], {
      env: { ...process.env, CELLO_CONTROLLER: `127.0.0.1:${handle!.apiPort}`, CELLO_CONFIG: join(storeDir, 'cellctl.yaml') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cellctl ${args.join(' ')} timed out: ${out}`));
    }, 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out });
    });
  });
}
const vmOf = (cellId: string) => gce.instances().find((i) => (i['labels'] as Record<string, string>)['cello-cell'] === cellId);

beforeAll(async () => {
  gce = await startGceFake();
  registry = await startRegistry();
  image = await pushBusybox(registry);
  storeDir = await mkdtemp(join(tmpdir(), 'cello-gce-e2e-store-'));
  store = await openStore({ kind: 'embedded', dir: storeDir });
  const caKey = randomBytes(32).toString('hex');
  process.env['CELLO_GCE_E2E_CA_KEY'] = caKey;
  const ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: caKey });
  const config = parseConfig({
    controllerId: CONTROLLER_ID,
    api: { listen: '127.0.0.1:0', adminCredentials: { file: join(storeDir, 'cellctl.yaml'), user: 'e2e-admin' } },
    metrics: { listen: '127.0.0.1:0' },
    provider: {
      kind: 'gce',
      project: gce.project,
      zones: gce.zones,
      endpoint: gce.endpoint,
      image: { amd64: `projects/${gce.project}/global/images/cello-cell` },
      machineTypes: ['e2-*'],
      firewall: { allowFromTags: ['cello-controller'] },
      operationTimeoutSeconds: 20,
    },
    security: { mode: 'mtls', encryptionKeyEnv: 'CELLO_GCE_E2E_CA_KEY' },
    gc: { intervalSeconds: 1 },
  });
  // As the daemon builds it, plus the fake's token (ADC's job in production) and the test-only address map.
  provider = gceProviderFromConfig(config.provider as Record<string, unknown>, {
    controllerId: CONTROLLER_ID,
    clientOptions: { authClient: gce.authClient as never },
    logger,
    testAgentAddressMap: harness.addressOf,
  });
  handle = await startController(config, { log: logger, provider, store, tickMs: 100 });
  const admin = await ca.issueUserCertificate('e2e-admin', { groups: [MASTERS_GROUP] });
  client = new ControllerClient(`127.0.0.1:${handle.apiPort}`, apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain, ...admin }));
  harness.start(provider);
}, 120_000);

afterAll(async () => {
  const steps: Array<() => unknown> = [
    () => client?.close(),
    () => handle?.stop().catch(() => undefined),
    () => harness.close(),
    () => store?.close(),
    () => storeDir && rm(storeDir, { recursive: true, force: true }),
    () => registry?.stop(),
    () => gce?.stop(),
    () => void delete process.env['CELLO_GCE_E2E_CA_KEY'],
  ];
  for (const step of steps)
    await Promise.resolve()
      .then(step)
      .catch((err: unknown) => console.error(`cleanup: ${(err as Error).message}`));
}, 120_000);

describe('the controller on Compute Engine (GCE fake)', () => {
  it('cellctl apply -> a VM booted from its metadata runs the pod; cellctl delete -> the VM is deleted', async () => {
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web', namespace: 'default' },
      spec: { restartPolicy: 'Never', containers: [{ name: 'main', image, command: ['sh', '-c', 'sleep 3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }] },
    });
    const file = join(storeDir, 'web.json');
    await writeFile(file, manifest);
    const applied = await cellctl(['apply', '-f', file]);
    expect(applied, applied.out).toMatchObject({ code: 0 });
    const running = await waitRunning('web');
    expect(running.instanceType).toMatch(/^e2-/);
    const vm = vmOf(running.cellId)!;
    expect(vm).toBeDefined();
    expect(vm['labels']).toMatchObject({ 'cello-controller': CONTROLLER_ID, 'cello-pod': 'default_web' });
    expect(String(vm['machineType']).endsWith(`/${running.instanceType}`)).toBe(true);
    expect(gce.firewalls()).toEqual([expect.objectContaining({ sourceTags: ['cello-controller'], targetTags: ['cello-cell'] })]);

    const deleted = await cellctl(['delete', 'pod', 'web', '--grace', '1']);
    expect(deleted, deleted.out).toMatchObject({ code: 0 });
    await waitFor('the VM to be deleted', () => vmOf(running.cellId) === undefined, { timeoutMs: 60_000, intervalMs: 250 });
    expect(gce.calls).toContain('DELETE instances.delete');
  }, 180_000);

  it('a Spot VM preempted (instance/preempted TRUE): the pod moves to a new cell', async () => {
    const manifest = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'spotty', namespace: 'default', annotations: { 'cello.io/spot': 'required' } },
      spec: {
        restartPolicy: 'Never',
        terminationGracePeriodSeconds: 1,
        containers: [{ name: 'main', image, command: ['sleep', '3600'], resources: { requests: { cpu: '100m', memory: '64Mi' } } }],
      },
    });
    await unary(client.applyPod.bind(client), ApplyPodRequest.fromPartial({ manifest }));
    const first = await waitRunning('spotty');
    const vm = vmOf(first.cellId)!;
    expect(vm['scheduling']).toMatchObject({ provisioningModel: 'SPOT', instanceTerminationAction: 'DELETE' });
    gce.preempt(`${String(vm['zone']).split('/').pop()}/${String(vm['name'])}`, 60_000);
    const moved = await waitRunning('spotty', first.cellId);
    expect(moved.cellId).not.toBe(first.cellId);
    // The preempted cell is drained and its VM deleted by the controller, before GCE would.
    await waitFor('the preempted VM to be deleted', () => vmOf(first.cellId) === undefined, { timeoutMs: 60_000, intervalMs: 250 });
    await unary(client.deletePod.bind(client), DeletePodRequest.fromPartial({ pod: { namespace: 'default', name: 'spotty' }, gracePeriodSeconds: 1 }));
    // No cell left: the controller's GC removes the agent firewall rule it made.
    await waitFor('the last VM to be deleted', () => gce.instances().length === 0, { timeoutMs: 60_000, intervalMs: 250 });
    await waitFor('the unused firewall rule to be removed', () => gce.firewalls().length === 0, { timeoutMs: 30_000, intervalMs: 250 });
  }, 180_000);
});
