#!/usr/bin/env node
// `npm run bench:controller` — two benchmarks of the controller. Prints figures; asserts nothing.
//
// 1. Pod start latency (REAL): the controller daemon with the local provider (real cell-agent
//    processes, runc, a local registry holding busybox), a warm pool of ready cells. For each
//    of N pods (default 100): wait until a warm cell is Ready, apply the pod through the API,
//    and time apply -> Running as seen on the WatchPods stream; then delete it. p50/p99.
//
// 2. Scale (SIMULATION): the real controller core in this process (embedded store on disk,
//    reconciler, gRPC API server) with a SIMULATED provider and simulated in-process agents
//    (src/providers/simulated): 10,000 cells and pods. Apply throughput through the gRPC API,
//    time until all are Running, reconcile latency p99, and the process's memory.
//
// Flags: --pods N (latency run), --cells N (scale run), --only latency|scale.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : d;
};
const only = opt('--only', '');
const N_PODS = Number(opt('--pods', '100'));
const N_CELLS = Number(opt('--cells', '10000'));

const imp = (p) => import(pathToFileURL(join(root, p)).href);
const grpc = await import('@grpc/grpc-js');
const { ControllerClient, WatchPodsRequest, ApplyPodRequest } = await imp('packages/proto/dist/controller.js');
const ctl = await imp('packages/controller/dist/index.js');
const testkit = await imp('packages/testkit/dist/index.js');

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
const ms = (x) => `${x.toFixed(1)} ms`;

function call(client, method, req, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => client[method](req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res))));
}

const podYaml = (name, image) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ${image}
    command: ["sh", "-c", "while true; do sleep 5; done"]
`;

// ------------------------------------------------------------------------------- latency
async function latency() {
  console.log(`\n== pod start latency, REAL local cells, warm pool, cached image: ${N_PODS} pods`);
  const dir = mkdtempSync(join(tmpdir(), 'cello-bench-ctl-'));
  const registry = await testkit.startRegistry();
  const image = await testkit.pushBusybox(registry);
  const apiPort = await testkit.freePort();
  const metricsPort = await testkit.freePort();
  const key = join(dir, 'key');
  writeFileSync(key, randomBytes(32).toString('base64'), { mode: 0o600 });
  const cfg = join(dir, 'controller.yaml');
  const controllerId = 'bench-latency';
  writeFileSync(
    cfg,
    `controllerId: ${controllerId}
api: { listen: "127.0.0.1:${apiPort}", adminCredentials: { file: ${JSON.stringify(join(dir, 'cellctl.yaml'))}, user: bench } }
metrics: { listen: "127.0.0.1:${metricsPort}" }
log: { level: warn }
store: { kind: embedded, dir: ${JSON.stringify(join(dir, 'store'))} }
provider: { kind: local, root: ${JSON.stringify(join(dir, 'cells'))}, insecureRegistries: ["${registry.host}"] }
security: { mode: mtls, encryptionKeyFile: ${JSON.stringify(key)} }
warmPool: [{ instanceType: local.nano, size: 2 }]
`,
  );
  const child = spawn(process.execPath, [join(root, 'packages/controller/dist/bin/controller.js'), '-c', cfg, '--terminate-cells-on-exit'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  // The controller writes the bench's credentials once it listens.
  const creds = join(dir, 'cellctl.yaml');
  await testkit.waitFor('the controller credentials', () => existsSync(creds), { timeoutMs: 30_000 });
  const client = new ControllerClient(`127.0.0.1:${apiPort}`, ctl.apiChannelCredentials(ctl.resolveCellctlContext(ctl.readCellctlConfig(creds), creds).credentials));
  const provider = new ctl.LocalProvider({ root: join(dir, 'cells') });
  try {
    await testkit.waitFor('controller', () => call(client, 'version', {}, 1000).catch(() => undefined), { timeoutMs: 30_000 });
    const readyWarm = async () => (await call(client, 'listCells', {})).cells.filter((c) => c.state === 3 && !c.pod?.name).length;
    // Phases seen on the watch stream, so Running is noticed the moment the store has it.
    const running = new Map();
    const watch = client.watchPods(WatchPodsRequest.fromPartial({ namespace: 'default' }));
    watch.on('data', (ev) => {
      if (ev.pod?.status?.phase === 2 && !running.has(ev.pod.metadata.name)) running.set(ev.pod.metadata.name, performance.now());
    });
    watch.on('error', (err) => {
      if (err.code !== 1) process.stderr.write(`watch: ${err.message}\n`);
    });
    // One warm-up pod so the first figure is not the registry's first request.
    const lat = [];
    const cold = [];
    const toDispatched = [];
    const dispatchedToStarted = [];
    for (let i = -1; i < N_PODS; i++) {
      await testkit.waitFor('a warm cell', async () => (await readyWarm()) >= 1, { timeoutMs: 120_000, intervalMs: 20 });
      const name = `lat-${i + 1}`;
      const t0 = performance.now();
      await call(client, 'applyPod', ApplyPodRequest.fromPartial({ manifest: podYaml(name, image), namespace: 'default' }));
      await testkit.waitFor(`${name} running`, () => running.has(name), { timeoutMs: 60_000, intervalMs: 2 });
      const dt = running.get(name) - t0;
      if (i >= 0) {
        lat.push(dt);
        // Where the time went, from the pod's events: controller side (apply -> ApplyPod accepted)
        // and agent side (ApplyPod -> container started).
        const evs = (await call(client, 'listEvents', { pod: { namespace: 'default', name }, limit: 0 })).events;
        const at = (r) => evs.find((e) => e.reason === r)?.time?.getTime();
        const pod = await call(client, 'getPod', { pod: { namespace: 'default', name } });
        const created = pod.metadata.creationTimestamp.getTime();
        if (at('Dispatched')) toDispatched.push(at('Dispatched') - created);
        if (at('Dispatched') && at('Started')) dispatchedToStarted.push(at('Started') - at('Dispatched'));
      } else cold.push(dt);
      await call(client, 'deletePod', { pod: { namespace: 'default', name }, gracePeriodSeconds: 0, wait: false });
      if ((i + 1) % 20 === 0) process.stderr.write(`  ${i + 1}/${N_PODS}\n`);
    }
    watch.cancel();
    lat.sort((a, b) => a - b);
    console.log(
      `  apply -> Running: p50 ${ms(pct(lat, 50))}  p90 ${ms(pct(lat, 90))}  p99 ${ms(pct(lat, 99))}  min ${ms(lat[0])}  max ${ms(lat[lat.length - 1])}  (n=${lat.length}; goal p50 < 300 ms)`,
    );
    console.log(`  (warm-up pod, first pull from the registry: ${ms(cold[0])})`);
    toDispatched.sort((a, b) => a - b);
    dispatchedToStarted.sort((a, b) => a - b);
    console.log(
      `  breakdown (from events, ms resolution): stored -> ApplyPod accepted p50 ${ms(pct(toDispatched, 50))} p99 ${ms(pct(toDispatched, 99))}; ApplyPod accepted -> container Started p50 ${ms(pct(dispatchedToStarted, 50))} p99 ${ms(pct(dispatchedToStarted, 99))}`,
    );
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
    const left = await provider.listOwned(controllerId);
    if (left.length) await provider.terminate(left.map((i) => i.instanceId));
    client.close();
    await registry.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------- scale
async function scale() {
  console.log(`\n== scale, SIMULATED provider and agents (in-process), real store/reconciler/API: ${N_CELLS} cells and pods`);
  const dir = mkdtempSync(join(tmpdir(), 'cello-bench-scale-'));
  const store = await ctl.openStore({ kind: 'embedded', dir: join(dir, 'store') });
  const types = ctl.localCatalog().types;
  const provider = new ctl.SimulatedProvider({ types, launchMs: 5, startMs: 5 });
  const agents = provider.agentPool();
  const durations = [];
  const metrics = new ctl.Metrics();
  // Every reconcile's duration, exactly (the histogram only has buckets).
  const origObserve = metrics.reconcileSeconds.observe.bind(metrics.reconcileSeconds);
  metrics.reconcileSeconds.observe = (labels, v) => {
    durations.push(v * 1000);
    return origObserve(labels, v);
  };
  const rec = new ctl.Reconciler({
    store,
    provider,
    controllerId: 'bench-scale',
    agents,
    log: ctl.silentLogger(),
    metrics,
    concurrency: 64,
    tickMs: 1000,
    gcIntervalSeconds: 3600,
  });
  // Plaintext on loopback, explicitly: the figures are the controller's, not TLS's.
  const auth = new ctl.ApiAuth({ insecure: true, policy: [{ users: ['system:anonymous'], groups: [], namespaces: ['*'], verbs: ['*'], resources: ['*'] }] });
  const api = new ctl.ControllerApi({ store, agents, log: ctl.silentLogger(), controllerId: 'bench-scale', providerName: provider.name, instanceTypes: types, auth });
  const port = await api.listen('127.0.0.1:0');
  const client = new ControllerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 200);
  try {
    await rec.start();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    let next = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= N_CELLS) return;
        await call(client, 'applyPod', ApplyPodRequest.fromPartial({ manifest: podYaml(`sim-${i}`, 'registry.invalid/app:1'), namespace: 'default' }), 120_000);
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    const tApply = performance.now() - t0;
    console.log(`  apply: ${N_CELLS} pods in ${(tApply / 1000).toFixed(1)} s = ${(N_CELLS / (tApply / 1000)).toFixed(0)} pods/s through the gRPC API`);
    let runningCount = 0;
    await testkit.waitFor(
      'all pods running',
      () => {
        runningCount = 0;
        for (const p of rec.pods.values()) if (p.rec.object?.status?.phase === 'POD_PHASE_RUNNING') runningCount++;
        return runningCount === N_CELLS;
      },
      { timeoutMs: 30 * 60_000, intervalMs: 500 },
    );
    const tAll = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    console.log(`  all ${N_CELLS} Running after ${(tAll / 1000).toFixed(1)} s (cells launched by the simulated provider: ${provider.size})`);
    durations.sort((a, b) => a - b);
    console.log(
      `  reconcile latency (one pod or cell): p50 ${ms(pct(durations, 50))}  p99 ${ms(pct(durations, 99))}  max ${ms(durations[durations.length - 1])}  (n=${durations.length}; goal p99 < 100 ms)`,
    );
    // CPU time is what the controller spent, whatever else the machine was doing; wall-clock
    // latencies above also include waiting for a shared CPU.
    console.log(
      `  CPU: ${(cpuMs / 1000).toFixed(1)} s user+system for the run = ${(cpuMs / N_CELLS).toFixed(2)} ms per pod (apply + schedule + launch + dispatch + status), ${(cpuMs / durations.length).toFixed(2)} ms per reconcile; store syncs ${store.stats?.syncs ?? 'n/a'}, records written ${store.stats?.records ?? 'n/a'} (${((store.stats?.records ?? 0) / N_CELLS).toFixed(1)} per pod)`,
    );
    console.log(`  event loop delay: p99 ${ms(loop.percentile(99) / 1e6)}  max ${ms(loop.max / 1e6)}`);
    global.gc?.();
    const m = process.memoryUsage();
    console.log(
      `  memory: peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB, now RSS ${(m.rss / 2 ** 20).toFixed(0)} MiB, heap used ${(m.heapUsed / 2 ** 20).toFixed(0)} MiB (goal < 1024 MiB; includes the simulated agents and the bench client)`,
    );
  } finally {
    clearInterval(sampler);
    await rec.stop();
    await api.close();
    client.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (only !== 'scale') await latency();
if (only !== 'latency') await scale();
process.exit(0);
