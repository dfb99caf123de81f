#!/usr/bin/env node
// Benchmark of the CRI shim through a real kubelet (prints figures; asserts nothing): pod create
// -> Running as seen on a watch of the API server, (a) kubelet v1.34.4 + cello-cri + the
// controller (local provider, a warm cell waiting before each pod), (b) kubelet v1.34.4 +
// Debian's containerd (CRI plugin, runc, a CNI bridge), same image (busybox from a local
// registry, already pulled: one warm-up pod per runtime is not counted), same run, one pod at a
// time. Prints p50/min/max of each and the ratio cello-cri / containerd, and where cello-cri's
// time goes (from the shim's debug log of each CRI call's duration): RunPodSandbox,
// CreateContainer, StartContainer, and when the kubelet's first relist after the start came.
//   npm run bench:cri -- [--pods N]
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : d;
};
const N = Number(opt('--pods', '10'));
const imp = (p) => import(pathToFileURL(join(root, p)).href);
const testkit = await imp('packages/testkit/dist/index.js');
const k8s = await imp('packages/controller/dist/k8s/index.js');
const { stringify } = await import('yaml');
const { ControllerClient } = await imp('packages/proto/dist/controller.js');
const ctl = await imp('packages/controller/dist/index.js');
const pct = (s, p) => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];

const dir = mkdtempSync(join(tmpdir(), 'cello-cri-bench-'));
const stops = [];
const cleanup = async () => {
  for (const s of stops.reverse()) await s().catch((e) => console.error(`cleanup: ${e.message}`));
  rmSync(dir, { recursive: true, force: true });
};
process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));

try {
  const registry = await testkit.startRegistry();
  stops.push(() => registry.stop());
  const image = await testkit.pushBusybox(registry, 'busybox:bench');
  const pause = await testkit.pushPause(registry);
  const kube = await testkit.startKubeApiserver();
  stops.push(() => kube.stop());
  const rest = new k8s.KubeRest(k8s.loadKubeConfig(kube.kubeconfig));

  // The controller: local provider, a warm pool of one cell.
  const apiPort = await testkit.freePort();
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, Buffer.alloc(32, 7).toString('base64'));
  const credsFile = join(dir, 'cellctl.yaml');
  const configPath = join(dir, 'controller.yaml');
  writeFileSync(
    configPath,
    stringify({
      controllerId: 'cri-bench',
      api: { listen: `127.0.0.1:${apiPort}`, adminCredentials: { file: credsFile, user: 'bench' } },
      metrics: { listen: `127.0.0.1:${await testkit.freePort()}` },
      log: { level: 'warn' },
      store: { kind: 'embedded', dir: join(dir, 'store') },
      provider: { kind: 'local', root: join(dir, 'cells'), insecureRegistries: [registry.host] },
      security: { mode: 'mtls', encryptionKeyFile: keyFile },
      warmPool: [{ instanceType: 'local.nano', size: 1 }],
      pods: { retainFinishedSeconds: 0 },
    }),
  );
  const daemon = spawn(process.execPath, [join(root, 'packages/controller/dist/bin/controller.js'), '-c', configPath, '--terminate-cells-on-exit'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  stops.push(async () => {
    daemon.kill('SIGTERM');
    await testkit.waitExit(daemon, { what: 'the controller', timeoutMs: 60_000 });
  });
  await testkit.waitFor('the controller credentials', () => existsSync(credsFile), { timeoutMs: 60_000 });
  const client = new ControllerClient(`127.0.0.1:${apiPort}`, ctl.apiChannelCredentials(ctl.resolveCellctlContext(ctl.readCellctlConfig(credsFile), credsFile).credentials));
  const warmCells = () => new Promise((res, rej) => client.listCells({}, (e, r) => (e ? rej(e) : res(r.cells.filter((c) => c.state === 3).length))));

  // cello-cri, told where the kubelet keeps its pods' volumes.
  const kubeletRoot = join(dir, 'kubelet-cello');
  mkdirSync(join(kubeletRoot, 'pods'), { recursive: true });
  const socket = join(dir, 'cri.sock');
  const shim = spawn(
    process.execPath,
    [
      join(root, 'packages/cri/dist/cli.js'),
      'serve',
      '--listen',
      socket,
      '--state-dir',
      join(dir, 'cri-state'),
      '--insecure-registry',
      registry.host,
      '--controller-config',
      credsFile,
      '--sandbox-image',
      pause,
      '--kubelet-pods-dir',
      join(kubeletRoot, 'pods'),
    ],
    // Its log at debug level: one line per CRI call with its duration (read for the breakdown below).
    { stdio: ['ignore', 'ignore', openSync(join(dir, 'cri.log'), 'w')], env: { ...process.env, CELLO_LOG_LEVEL: 'debug' } },
  );
  stops.push(async () => {
    shim.kill('SIGTERM');
    await testkit.waitExit(shim, { what: 'cello-cri', timeoutMs: 30_000 });
  });
  await testkit.waitFor('cello-cri listening', () => existsSync(socket), { timeoutMs: 30_000 });

  // One watch of the API server's pods for both runs.
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
  stops.push(async () => ac.abort());

  const TAINT = { key: 'cello.io/cell', value: 'true', effect: 'NoSchedule' };
  /** Per counted pod: its create time and when the watch saw it Running (epoch ms, as the shim's log). */
  const windows = [];
  async function runPods(label, node, before) {
    const lat = [];
    for (let i = 0; i <= N; i++) {
      await before();
      const name = `${label}-${i}`;
      const isRunning = new Promise((r) => running.set(name, r));
      const isGone = new Promise((r) => gone.set(name, r));
      const t0 = performance.now();
      const wall0 = Date.now();
      await rest.post('/api/v1/namespaces/default/pods', {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name },
        spec: {
          automountServiceAccountToken: false,
          terminationGracePeriodSeconds: 1,
          nodeSelector: { 'kubernetes.io/hostname': node },
          tolerations: [{ ...TAINT, operator: 'Equal' }],
          containers: [{ name: 'main', image, imagePullPolicy: 'IfNotPresent', command: ['sh', '-c', 'while true; do sleep 5; done'] }],
        },
      });
      await isRunning;
      // Pod 0 warms up (the image is pulled, the runtime's first sandbox made); not counted.
      if (i > 0) lat.push(performance.now() - t0);
      if (i > 0 && label === 'cello') windows.push({ t0: wall0, running: Date.now() });
      await rest.delete(`/api/v1/namespaces/default/pods/${name}`);
      await isGone;
      process.stderr.write(`\r${label}: ${i}/${N} pods, last ${(performance.now() - t0).toFixed(0)} ms   `);
    }
    process.stderr.write('\n');
    return [...lat].sort((a, b) => a - b);
  }

  // (a) cello-cri
  const kubeletA = await testkit.startKubelet({
    apiserver: kube,
    runtimeEndpoint: socket,
    nodeName: 'bench-cello-cri',
    taints: [TAINT],
    rootDir: kubeletRoot,
    readyTimeoutMs: 120_000,
  });
  stops.push(() => kubeletA.stop());
  const cello = await runPods('cello', 'bench-cello-cri', () => testkit.waitFor('a warm cell', async () => (await warmCells()) >= 1, { timeoutMs: 120_000, intervalMs: 50 }));
  await kubeletA.stop();

  // (b) containerd
  const containerd = await testkit.startContainerd({ sandboxImage: pause, insecureRegistries: [registry.host] });
  stops.push(() => containerd.stop());
  const kubeletB = await testkit.startKubelet({ apiserver: kube, runtimeEndpoint: containerd.socket, nodeName: 'bench-containerd', readyTimeoutMs: 120_000 });
  stops.push(() => kubeletB.stop());
  const ctrd = await runPods('containerd', 'bench-containerd', async () => undefined);

  const row = (name, s) =>
    `  ${name.padEnd(34)} p50 ${pct(s, 50).toFixed(0).padStart(6)} ms   min ${s[0].toFixed(0).padStart(6)} ms   max ${s[s.length - 1].toFixed(0).padStart(6)} ms`;
  console.log(`pod create -> Running through a real kubelet v1.34.4 (watch of the API server), ${N} pods one at a time, image cached`);
  console.log(row('cello-cri (warm cell, local provider)', cello));
  console.log(row('containerd 1.6 (runc, CNI bridge)', ctrd));
  console.log(`  ratio cello-cri / containerd (p50): ${(pct(cello, 50) / pct(ctrd, 50)).toFixed(2)}x`);
  console.log(
    `  load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} (${cpus().length} cores)`,
  );

  // Where cello-cri's time goes, per pod (ms from the pod's creation, p50 over the pods): each CRI
  // call's start and end from the shim's log (a line's time is the call's end), and the kubelet's
  // first relist (a ListContainers) starting after StartContainer returned.
  const calls = readFileSync(join(dir, 'cri.log'), 'utf8')
    .split('\n')
    .filter((l) => l.includes('"CRI call"'))
    .map((l) => JSON.parse(l))
    .map((c) => ({ rpc: c.rpc, end: c.time, start: c.time - c.ms, ms: c.ms }));
  const after = [];
  const marks = { RunPodSandbox: [], CreateContainer: [], StartContainer: [], startDone: [], relist: [], relistToRunning: [] };
  for (const w of windows) {
    const inside = calls.filter((c) => c.start >= w.t0 - 5 && c.end <= w.running + 5);
    const one = (rpc) => inside.find((c) => c.rpc === rpc);
    const [run, create, start] = [one('RunPodSandbox'), one('CreateContainer'), one('StartContainer')];
    if (!run || !create || !start) continue;
    marks.RunPodSandbox.push(run.ms);
    marks.CreateContainer.push(create.ms);
    marks.StartContainer.push(start.ms);
    marks.startDone.push(start.end - w.t0);
    const relist = inside.find((c) => c.rpc === 'ListContainers' && c.start >= start.end);
    if (relist) {
      marks.relist.push(relist.start - w.t0);
      marks.relistToRunning.push(w.running - relist.start);
      // The calls between that relist and Running: the kubelet's status reads.
      after.push(
        inside
          .filter((c) => c.start >= relist.start)
          .map((c) => `${c.rpc} ${c.ms}`)
          .join(', '),
      );
    }
  }
  const p50 = (a) =>
    a.length
      ? pct(
          [...a].sort((x, y) => x - y),
          50,
        )
          .toFixed(0)
          .padStart(5)
      : '    -';
  console.log(`cello-cri, where the time goes (p50 of ${marks.RunPodSandbox.length} pods; ms):`);
  console.log(`  RunPodSandbox ${p50(marks.RunPodSandbox)}   CreateContainer ${p50(marks.CreateContainer)}   StartContainer ${p50(marks.StartContainer)}`);
  console.log(`  calls from that relist to Running (ms each), first pod: ${after[0] ?? '-'}`);
  console.log(
    `  StartContainer returned at +${p50(marks.startDone).trim()}, the next relist began at +${p50(marks.relist).trim()}, Running seen ${p50(marks.relistToRunning).trim()} after it`,
  );
} finally {
  await cleanup();
}
process.exit(0);
