#!/usr/bin/env node
// npm run bench:prepull — apply -> Running on a warm cell for an image that is not in the local
// image cache, with the warm cell's pre-pull (warmPool[].prePull) and without it. Each run is a
// fresh controller daemon with the local provider (real cell-agent processes, runc) and an
// empty shared image cache, a real registry on loopback, one warm local.nano cell. With
// pre-pull, the pod is applied once the warm cell has pulled the image (as it would have long
// before a real pod arrived). Prints the medians of --rounds (3) and the ratio; asserts nothing.
// Needs root, runc, docker-registry and built packages (npx turbo run build).
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const ROUNDS = Number(opt('--rounds', '3'));
const MIB = Number(opt('--mib', '96'));
const LAYERS = 4;

const imp = (p) => import(pathToFileURL(join(root, p)).href);
const grpc = await import('@grpc/grpc-js');
const { ControllerClient, WatchPodsRequest, ApplyPodRequest } = await imp('packages/proto/dist/controller.js');
const ctl = await imp('packages/controller/dist/index.js');
const testkit = await imp('packages/testkit/dist/index.js');

const call = (client, method, req, timeoutMs = 30_000) =>
  new Promise((resolve, reject) => client[method](req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res))));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const s = (ms) => `${(ms / 1000).toFixed(2)} s`;

function metrics(port) {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', timeout: 3000 }, (r) => {
      let b = '';
      r.on('data', (d) => (b += d));
      r.on('end', () => resolve(b));
    });
    req.on('error', reject);
    req.end();
  });
}
const sample = (text, line) =>
  Number(
    text
      .split('\n')
      .find((l) => l.startsWith(`${line} `))
      ?.split(' ')
      .pop() ?? 0,
  );

/** A busybox layer (for sh) and LAYERS layers of incompressible data: MIB MiB in all. */
function layers() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-prepull-'));
  const bb = join(dir, 'bb');
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(join(bb, d), { recursive: true });
  copyFileSync('/bin/busybox', join(bb, 'bin/busybox'));
  chmodSync(join(bb, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'sleep']) symlinkSync('busybox', join(bb, 'bin', a));
  writeFileSync(join(bb, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  const out = [{ blob: execFileSync('tar', ['-C', bb, '--numeric-owner', '-cf', '-', '.'], { maxBuffer: 64 << 20 }) }];
  for (let i = 0; i < LAYERS; i++) {
    const d = join(dir, `l${i}`, 'data');
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, `blob${i}`), randomBytes(Math.floor((MIB * 2 ** 20) / LAYERS)));
    out.push({ blob: execFileSync('tar', ['-C', join(dir, `l${i}`), '--numeric-owner', '-cf', '-', '.'], { maxBuffer: 1 << 30 }) });
  }
  rmSync(dir, { recursive: true, force: true });
  return out;
}

async function run(registry, image, prePull, i) {
  const dir = mkdtempSync(join(tmpdir(), 'cello-bench-prepull-'));
  const apiPort = await testkit.freePort();
  const metricsPort = await testkit.freePort();
  const key = join(dir, 'key');
  writeFileSync(key, randomBytes(32).toString('base64'), { mode: 0o600 });
  const cfg = join(dir, 'controller.yaml');
  const controllerId = `bench-prepull-${i}`;
  // recentPods 0: only the configured image is pre-pulled, so both runs differ in that alone.
  writeFileSync(
    cfg,
    `controllerId: ${controllerId}
api: { listen: "127.0.0.1:${apiPort}", adminCredentials: { file: ${JSON.stringify(join(dir, 'cellctl.yaml'))}, user: bench } }
metrics: { listen: "127.0.0.1:${metricsPort}" }
log: { level: warn }
store: { kind: embedded, dir: ${JSON.stringify(join(dir, 'store'))} }
provider: { kind: local, root: ${JSON.stringify(join(dir, 'cells'))}, insecureRegistries: ["${registry.host}"] }
security: { mode: mtls, encryptionKeyFile: ${JSON.stringify(key)} }
warmPool: [{ instanceType: local.nano, size: 1, recentPods: 0, prePull: ${JSON.stringify(prePull ? [image] : [])} }]
`,
  );
  const child = spawn(process.execPath, [join(root, 'packages/controller/dist/bin/controller.js'), '-c', cfg, '--terminate-cells-on-exit'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const creds = join(dir, 'cellctl.yaml');
  const provider = new ctl.LocalProvider({ root: join(dir, 'cells') });
  let client;
  try {
    await testkit.waitFor('the controller credentials', () => existsSync(creds), { timeoutMs: 30_000 });
    client = new ControllerClient(`127.0.0.1:${apiPort}`, ctl.apiChannelCredentials(ctl.resolveCellctlContext(ctl.readCellctlConfig(creds), creds).credentials));
    await testkit.waitFor('controller', () => call(client, 'version', {}, 1000).catch(() => undefined), { timeoutMs: 30_000 });
    await testkit.waitFor('a warm cell', async () => (await call(client, 'listCells', {})).cells.some((c) => c.state === 3 && !c.pod?.name), {
      timeoutMs: 120_000,
      intervalMs: 50,
    });
    if (prePull) {
      await testkit.waitFor('the pre-pull', async () => sample(await metrics(metricsPort), 'cello_prepull_pulls_total{outcome="pulled"}') >= 1, {
        timeoutMs: 300_000,
        intervalMs: 100,
      });
    }
    let runningAt;
    const watch = client.watchPods(WatchPodsRequest.fromPartial({ namespace: 'default' }));
    watch.on('data', (ev) => {
      if (ev.pod?.metadata?.name === 'p' && ev.pod.status?.phase === 2 && runningAt === undefined) runningAt = performance.now();
    });
    watch.on('error', () => {});
    const manifest = `apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - { name: main, image: "${image}", command: ["sh", "-c", "while true; do sleep 5; done"] }\n`;
    const t0 = performance.now();
    await call(client, 'applyPod', ApplyPodRequest.fromPartial({ manifest, namespace: 'default' }));
    await testkit.waitFor('p running', () => runningAt !== undefined, { timeoutMs: 300_000, intervalMs: 2 });
    watch.cancel();
    const text = await metrics(metricsPort);
    return { ms: runningAt - t0, hit: sample(text, 'cello_prepull_images_total{result="hit"}'), miss: sample(text, 'cello_prepull_images_total{result="miss"}') };
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
    const left = await provider.listOwned(controllerId);
    if (left.length) await provider.terminate(left.map((x) => x.instanceId));
    client?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const registry = await testkit.startRegistry();
try {
  const { ref: image } = await testkit.pushImage(registry, 'bench/prepull:1', layers(), { Cmd: ['sh'], Env: ['PATH=/bin'] });
  console.log(`\n== apply -> Running on a warm cell, image not in the local cache (${MIB} MiB in ${LAYERS + 1} layers, uncompressed), ${ROUNDS} rounds`);
  const without = [];
  const withPre = [];
  for (let i = 0; i < ROUNDS; i++) {
    const a = await run(registry, image, false, `${i}a`);
    const b = await run(registry, image, true, `${i}b`);
    without.push(a.ms);
    withPre.push(b.ms);
    process.stderr.write(`  round ${i + 1}: without ${s(a.ms)} (hits ${a.hit}, misses ${a.miss}); with pre-pull ${s(b.ms)} (hits ${b.hit}, misses ${b.miss})\n`);
  }
  const w = median(without);
  const p = median(withPre);
  console.log(`  without pre-pull: median ${s(w)}`);
  console.log(`  with pre-pull:    median ${s(p)}`);
  console.log(`  ratio (with / without): ${(p / w).toFixed(2)}  (${(w / p).toFixed(1)}x faster)`);
} finally {
  await registry.stop();
}
