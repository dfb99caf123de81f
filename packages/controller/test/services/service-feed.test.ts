// Cluster Services reaching a cell, end to end with real components: a real kube-apiserver
// holds the Services and EndpointSlices, the controller's one watch and its SyncServices feed
// stream them to a real cell-agent process, which programs nftables in the cell's network
// namespace (testkit's network lab), and a client in that namespace connects to cluster IPs.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, requireCommand, startKubeApiserver, startNetLab, waitFor, type KubeApiserver, type NetLab } from '@cello/testkit';
import { AgentPool, insecureAgentCredentials } from '../../src/agents/pool.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { ClusterServices } from '../../src/services/cluster-services.js';
import { ServiceFeed } from '../../src/services/feed.js';
import { REFUSED_REASON, watchClusterServices, type ServiceWatch } from '../../src/services/watch.js';

const CLI = join(dirname(createRequire(import.meta.url).resolve('@cello/cell-agent')), 'cli.js');
const CELL_ID = 'feed-cell';
const log = pino({ level: process.env.TEST_LOG ?? 'silent' });

let kube: KubeApiserver;
let lab: NetLab;
let agent: ChildProcess | undefined;
let agentPort: number;
let stateDir: string;
const pool = new AgentPool(insecureAgentCredentials);
const registry = new Registry();
let services: ClusterServices;
let watch: ServiceWatch;
let feed: ServiceFeed;

async function startAgentProcess(): Promise<void> {
  agent = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      '--listen',
      `127.0.0.1:${agentPort}`,
      '--state-dir',
      stateDir,
      '--insecure-dev',
      '--pod-netns',
      `/run/netns/${lab.cell}`,
      '--cell-id',
      CELL_ID,
      '--cgroup-parent',
      `/cello-test/${CELL_ID}`,
    ],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  await waitFor(
    'the agent to answer',
    () => new Promise<boolean>((resolve) => pool.get(CELL_ID, `127.0.0.1:${agentPort}`).getInfo({}, new Metadata(), { deadline: Date.now() + 1000 }, (err) => resolve(!err))),
    { timeoutMs: 20_000, intervalMs: 200 },
  );
}

async function stopAgentProcess(): Promise<void> {
  const a = agent;
  agent = undefined;
  if (!a || a.exitCode !== null) return;
  const exited = new Promise((r) => a.once('exit', r));
  a.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  a.kill('SIGKILL');
}

async function apply(yaml: string): Promise<void> {
  const r = await kube.kubectl(['apply', '-f', '-'], { input: yaml });
  if (r.code !== 0) throw new Error(`kubectl apply: ${r.stderr}`);
}

const webService = `
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  ports: [{ name: http, port: 80, targetPort: http }]
`;

// The Service has no selector and its endpoints are the network lab's addresses, not pods, so
// its EndpointSlice is written here as for any selectorless Service (kube-controller-manager's
// EndpointSlice controller leaves such slices alone).
function webSlice(endpoints: { ip: string; ready: boolean }[]): string {
  return `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-abc12, namespace: default, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
${endpoints.map((e) => `  - addresses: ["${e.ip}"]\n    conditions: { ready: ${e.ready} }`).join('\n')}
`;
}

async function clusterIP(name: string): Promise<string> {
  const r = await kube.kubectl(['get', 'service', name, '-o', 'jsonpath={.spec.clusterIP}']);
  return r.stdout.trim();
}

/** Waits until every connection to ip:80 from the cell is answered by exactly `expected`. */
async function waitServed(ip: string, expected: string[], what: string): Promise<void> {
  let last: string[] = [];
  await waitFor(
    what,
    () => {
      last = lab.connect(lab.cell, 'tcp', ip, 80, 12, 700);
      const seen = new Set(last);
      return seen.size === expected.length && expected.every((e) => seen.has(e));
    },
    { timeoutMs: 20_000, intervalMs: 100 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last answers: ${JSON.stringify(last)}`);
  });
}

beforeAll(async () => {
  requireCommand('nft', 'nftables');
  kube = await startKubeApiserver();
  lab = await startNetLab(`feed${process.pid % 10000}`, '10.202.0');
  stateDir = mkdtempSync(join(tmpdir(), 'cello-feed-'));
  agentPort = await freePort();
  await startAgentProcess();
  services = new ClusterServices();
  watch = watchClusterServices(new KubeRest(loadKubeConfig(kube.kubeconfig)), services, log);
  feed = new ServiceFeed({ services, agents: pool, log, registry });
  feed.start(CELL_ID, `127.0.0.1:${agentPort}`);
}, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries

afterAll(async () => {
  feed?.close();
  await watch?.stop();
  pool.closeAll();
  await stopAgentProcess();
  await lab?.stop();
  await kube?.stop();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

describe('Services from the API server on a cell (watch -> SyncServices -> nftables)', () => {
  const [b0, b1] = ['10.202.0.2', '10.202.0.3'];

  it('a Service and its EndpointSlice made in the API server are served on the cell', async () => {
    await apply(webService);
    await apply(
      webSlice([
        { ip: b0, ready: true },
        { ip: b1, ready: true },
      ]),
    );
    const ip = await clusterIP('web');
    expect(ip).toMatch(/^10\.0\.0\.\d+$/);
    await waitServed(ip, [`${b0}:8080`, `${b1}:8080`], 'both endpoints to answer on the cluster IP');
    expect(feed.acked(CELL_ID)).toBe(services.version);
  });

  it('an endpoint that stops being ready stops receiving traffic, and the change is one delta', async () => {
    const ip = await clusterIP('web');
    const before = services.version;
    await apply(
      webSlice([
        { ip: b0, ready: true },
        { ip: b1, ready: false },
      ]),
    );
    await waitServed(ip, [`${b0}:8080`], 'only the ready endpoint to answer');
    await waitFor('the cell to acknowledge the change', () => feed.acked(CELL_ID) === services.version);
    expect(services.version).toBe(before + 1);
    const text = await registry.getSingleMetricAsString('cello_services_propagation_seconds');
    expect(Number(/_count (\d+)/.exec(text)?.[1])).toBeGreaterThan(0);
  });

  it('a Service without endpoints refuses connections; a deleted one stops answering', async () => {
    await apply(webService.replace('name: web', 'name: lonely'));
    const lonely = await clusterIP('lonely');
    await waitFor('the Service without endpoints to refuse', () => lab.connect(lab.cell, 'tcp', lonely, 80, 1, 700)[0] === 'ERR:ECONNREFUSED', {
      timeoutMs: 20_000,
      intervalMs: 100,
    });

    const ip = await clusterIP('web');
    const r = await kube.kubectl(['delete', 'service', 'web']);
    expect(r.code).toBe(0);
    await waitFor('the deleted Service to stop answering', () => lab.connect(lab.cell, 'tcp', ip, 80, 1, 500)[0] === 'ERR:ETIMEDOUT', { timeoutMs: 20_000, intervalMs: 100 });
  });

  it('a Service with an IPv6 external IP gets one Warning Event saying pods on cells cannot reach it, whatever the replicas', async () => {
    // A second controller replica watching the same cluster: it must not say it a second time.
    const replica = watchClusterServices(new KubeRest(loadKubeConfig(kube.kubeconfig)), new ClusterServices(), log);
    await apply(`
apiVersion: v1
kind: Service
metadata: { name: v6ext, namespace: default }
spec:
  externalIPs: ["fd00:96::5"]
  ports: [{ name: http, port: 80, targetPort: http }]
`);
    type Events = { items: { reason: string; type: string; message: string; involvedObject: { kind: string } }[] };
    // Cello's Events about it: the control plane's controllers may record their own about the same Service.
    const events = async () =>
      (JSON.parse((await kube.kubectl(['get', 'events', '--field-selector', `involvedObject.name=v6ext,reason=${REFUSED_REASON}`, '-o', 'json'])).stdout) as Events).items;
    await waitFor('the Event on the Service', async () => (await events()).length > 0, { timeoutMs: 20_000, intervalMs: 200 });
    // An update that does not change why (a label) records no second Event.
    expect((await kube.kubectl(['label', 'service', 'v6ext', 'touched=yes'])).code).toBe(0);
    // Nor does a replica that restarts (its in-memory dedupe empty) once it has listed again.
    await replica.stop();
    const restarted = new ClusterServices();
    const again = watchClusterServices(new KubeRest(loadKubeConfig(kube.kubeconfig)), restarted, log);
    try {
      await waitFor('the restarted replica to list the Services', () => restarted.isSynced(), { timeoutMs: 20_000, intervalMs: 100 });
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      await again.stop();
    }
    const got = await events();
    expect(got, JSON.stringify(got.map((e) => [e.type, e.reason, e.message]))).toHaveLength(1);
    expect(got[0]).toMatchObject({ type: 'Warning', reason: 'NotServedOnCells', involvedObject: { kind: 'Service' } });
    expect(got[0]!.message).toMatch(/IPv6 external or load-balancer IPs \(fd00:96::5\) are not served on cells/);
    expect((await kube.kubectl(['delete', 'service', 'v6ext'])).code).toBe(0);
  });

  it('a restarted agent gets a snapshot and then deltas again', async () => {
    await apply(webService);
    await apply(
      webSlice([
        { ip: b0, ready: true },
        { ip: b1, ready: true },
      ]),
    );
    const ip = await clusterIP('web');
    await waitServed(ip, [`${b0}:8080`, `${b1}:8080`], 'both endpoints before the restart');

    await stopAgentProcess();
    await startAgentProcess();
    // A change the new agent can only apply if the feed first sent it everything.
    await apply(webSlice([{ ip: b1, ready: true }]));
    await waitServed(ip, [`${b1}:8080`], 'the change applied by the restarted agent');
    await waitFor('the restarted cell to acknowledge the current version', () => feed.acked(CELL_ID) === services.version, { timeoutMs: 20_000 });
  });
});
