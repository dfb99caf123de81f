#!/usr/bin/env node
// Benchmark of the virtual node (prints figures; asserts nothing). A real kube-apiserver and
// kube-scheduler (scripts/k8s/build.sh), the controller daemon with the local provider (real
// cell-agent processes, runc, a local registry with busybox) and its virtual node, a warm pool.
// For each of N pods (default 50), one after the other: wait for a warm cell, create the pod
// through the API server, time create -> Running as seen on a watch of the API server, then
// delete it and wait until the object is gone. Prints p50/p99 and the API server's own count
// of requests made per pod (apiserver_request_total, by verb/resource/subresource).
//   npm run bench:k8s -- [--pods N] [--warm N]
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : d;
};
const N = Number(opt('--pods', '50'));
const WARM = Number(opt('--warm', '2'));
const imp = (p) => import(pathToFileURL(join(root, p)).href);
const testkit = await imp('packages/testkit/dist/index.js');
const k8s = await imp('packages/controller/dist/k8s/index.js');
const { stringify } = await import('yaml');
const { ControllerClient } = await imp('packages/proto/dist/controller.js');
const ctl = await imp('packages/controller/dist/index.js');

const pct = (s, p) => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
const NODE = 'cello-bench';

const registry = await testkit.startRegistry();
let kube;
process.on('uncaughtException', async (err) => {
  console.error(err);
  await kube?.stop();
  await registry.stop();
  process.exit(1);
});
const image = await testkit.pushBusybox(registry);
kube = await testkit.startKubeApiserver();
const dir = mkdtempSync(join(tmpdir(), 'cello-k8s-bench-'));
const apiPort = await testkit.freePort();
const kubeletPort = await testkit.freePort();
const serving = await kube.issueCert('bench-kubelet', { cn: NODE, ips: ['127.0.0.1'] });
await kube.kubectl(['create', 'serviceaccount', 'default']);
const keyFile = join(dir, 'key');
writeFileSync(keyFile, Buffer.alloc(32, 7).toString('base64'));
const configPath = join(dir, 'controller.yaml');
writeFileSync(
  configPath,
  stringify({
    controllerId: 'k8s-bench',
    api: { listen: `127.0.0.1:${apiPort}`, adminCredentials: { file: join(dir, 'cellctl.yaml'), user: 'bench' } },
    metrics: { listen: `127.0.0.1:${await testkit.freePort()}` },
    log: { level: 'warn' },
    store: { kind: 'embedded', dir: join(dir, 'store') },
    provider: { kind: 'local', root: join(dir, 'cells'), insecureRegistries: [registry.host] },
    security: { mode: 'mtls', encryptionKeyFile: keyFile },
    warmPool: [{ instanceType: 'local.nano', size: WARM }],
    pods: { retainFinishedSeconds: 0 },
    kubernetes: {
      enabled: true,
      nodeName: NODE,
      kubeconfig: kube.kubeconfig,
      internalIP: '127.0.0.1',
      kubelet: { listen: `127.0.0.1:${kubeletPort}`, certFile: serving.certFile, keyFile: serving.keyFile, clientCAFile: kube.caFile },
      leaderElection: { enabled: false },
    },
  }),
);
const daemon = spawn(process.execPath, [join(root, 'packages/controller/dist/bin/controller.js'), '-c', configPath, '--terminate-cells-on-exit'], {
  stdio: ['ignore', 'ignore', 'inherit'],
});
// The controller writes the bench's credentials once its API listens.
const credsFile = join(dir, 'cellctl.yaml');
await testkit.waitFor('the controller credentials', () => existsSync(credsFile), { timeoutMs: 60_000 });
const client = new ControllerClient(`127.0.0.1:${apiPort}`, ctl.apiChannelCredentials(ctl.resolveCellctlContext(ctl.readCellctlConfig(credsFile), credsFile).credentials));
const cells = () => new Promise((res, rej) => client.listCells({}, (e, r) => (e ? rej(e) : res(r.cells))));
const rest = new k8s.KubeRest(k8s.loadKubeConfig(kube.kubeconfig));

async function requestCounts() {
  const r = await kube.kubectl(['get', '--raw', '/metrics']);
  const counts = new Map();
  for (const line of r.stdout.split('\n')) {
    if (!line.startsWith('apiserver_request_total{')) continue;
    const labels = Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (!['pods', 'events', 'nodes', 'leases', 'configmaps', 'secrets', 'serviceaccounts'].includes(labels.resource)) continue;
    if (labels.component !== 'apiserver') continue;
    const key = `${labels.verb} ${labels.resource}${labels.subresource ? '/' + labels.subresource : ''}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return counts;
}

try {
  await testkit.waitFor(
    'virtual node Ready',
    async () => {
      const n = await rest.get(`/api/v1/nodes/${NODE}`).catch(() => undefined);
      return n?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
    },
    { timeoutMs: 60_000, intervalMs: 200 },
  );
  const running = new Map();
  const gone = new Map();
  const ac = new AbortController();
  const list = await rest.get('/api/v1/namespaces/default/pods');
  void rest
    .watch(
      `/api/v1/namespaces/default/pods?watch=1&resourceVersion=${list.metadata.resourceVersion}`,
      (ev) => {
        const name = ev.object.metadata.name;
        if (ev.type === 'DELETED') gone.get(name)?.();
        else if (ev.object.status?.phase === 'Running') running.get(name)?.();
      },
      ac.signal,
    )
    .catch(() => undefined);
  const before = await requestCounts();
  const lat = [];
  for (let i = 0; i < N; i++) {
    await testkit.waitFor('a warm cell', async () => (await cells()).filter((c) => c.state === 3).length >= 1, { timeoutMs: 120_000, intervalMs: 50 });
    const name = `bench-${i}`;
    const isRunning = new Promise((r) => running.set(name, r));
    const isGone = new Promise((r) => gone.set(name, r));
    const t0 = performance.now();
    await rest.post('/api/v1/namespaces/default/pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name },
      spec: {
        automountServiceAccountToken: false,
        terminationGracePeriodSeconds: 1,
        nodeSelector: { type: 'virtual-kubelet' },
        tolerations: [{ key: 'virtual-kubelet.io/provider', operator: 'Exists', effect: 'NoSchedule' }],
        containers: [{ name: 'main', image, command: ['sh', '-c', 'while true; do sleep 5; done'] }],
      },
    });
    await isRunning;
    lat.push(performance.now() - t0);
    await rest.delete(`/api/v1/namespaces/default/pods/${name}`);
    await isGone;
    process.stderr.write(`\r${i + 1}/${N} pods, last ${lat[lat.length - 1].toFixed(0)} ms   `);
  }
  process.stderr.write('\n');
  const after = await requestCounts();
  ac.abort();
  const s = [...lat].sort((a, b) => a - b);
  console.log(`virtual node: pod create -> Running through kube-apiserver (warm pool ${WARM}, cached image), ${N} pods one at a time`);
  console.log(`  p50 ${pct(s, 50).toFixed(0)} ms   p99 ${pct(s, 99).toFixed(0)} ms   min ${s[0].toFixed(0)} ms   max ${s[s.length - 1].toFixed(0)} ms`);
  console.log(`API server requests per pod, all clients (create, run, delete; apiserver_request_total by verb and resource):`);
  const rows = [...after]
    .map(([k, v]) => [k, (v - (before.get(k) ?? 0)) / N])
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1]);
  for (const [k, v] of rows) console.log(`  ${v.toFixed(2).padStart(7)}  ${k}`);
  const writes = rows.filter(([k]) => /^(PATCH|POST|PUT|DELETE) /.test(k)).reduce((a, [, v]) => a + v, 0);
  console.log(
    `  writes of all kinds: ${writes.toFixed(2)} per pod (includes the benchmark's create+delete, the scheduler's binding and event, lease/status heartbeats over the run)`,
  );
} finally {
  daemon.kill('SIGTERM');
  await testkit.waitExit(daemon, { what: 'the controller' });
  await kube.stop();
  await registry.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
