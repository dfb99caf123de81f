#!/usr/bin/env node
// npm run bench:agent — time from ApplyPod to "unit running" (seen on WatchStatus) for a busybox
// unit: cold (empty image cache: pull + unpack + start) and warm (cached image; p50/p99 over 50
// pods, one after another, each deleted before the next), beside bare `runc run -d` of the same
// bundle (the agent's own config.json, same overlay rootfs) measured in the same run.
// The agent runs as its own process (`cell-agent serve`), as on a cell; this process is the
// client, like the controller. BENCH_IN_PROCESS=1 runs it inside this process instead.
// Needs root, runc, docker-registry, built packages (npx turbo run build --filter=@cello/cell-agent...).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, symlinkSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pino from 'pino';
import { startAgent, connectAgent } from '@cello/cell-agent';
import { startRegistry, pushImage } from '@cello/testkit';
import { ApplyPodRequest, Pod } from '@cello/proto/cell';

const N = Number(process.env.BENCH_PODS ?? 50);
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const fmt = (ms) => `${ms.toFixed(1)} ms`;

function busyboxTar() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-rootfs-'));
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev']) mkdirSync(join(dir, d), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'sleep']) symlinkSync('busybox', join(dir, 'bin', a));
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  return execFileSync('tar', ['-C', dir, '--numeric-owner', '-cf', '-', '.'], { maxBuffer: 64 << 20 });
}

const registry = await startRegistry();
const { ref } = await pushImage(registry, 'bench/busybox:1', [{ blob: busyboxTar() }], { Cmd: ['sh'], Env: ['PATH=/bin'] });
const stateDir = mkdtempSync(join(tmpdir(), 'bench-agent-'));
// BENCH_TRACE=1: also break the agent's part down (its debug timings, logged to a file).
const traceFile = process.env.BENCH_TRACE ? join(stateDir, '..', `bench-trace-${process.pid}.log`) : undefined;
const runDir = mkdtempSync('/dev/shm/bench-run-');
let agent;
let daemon;
if (process.env.BENCH_IN_PROCESS) {
  const logger = traceFile ? pino({ level: 'debug' }, pino.destination({ dest: traceFile, sync: true })) : pino({ level: 'silent' });
  agent = await startAgent({
    listen: '127.0.0.1:0',
    stateDir,
    runDir,
    tls: undefined,
    insecureRegistries: [registry.host],
    logger,
    cgroupParent: '/cello-bench/pod',
    heartbeatMs: 60_000,
  });
} else {
  const cli = join(dirname(createRequire(import.meta.url).resolve('@cello/cell-agent')), 'cli.js');
  const { openSync } = await import('node:fs');
  daemon = spawn(
    process.execPath,
    [
      cli,
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--state-dir',
      stateDir,
      '--run-dir',
      runDir,
      '--insecure-dev',
      '--insecure-registry',
      registry.host,
      '--cgroup-parent',
      '/cello-bench/pod',
    ],
    {
      stdio: ['ignore', 'pipe', traceFile ? openSync(traceFile, 'w') : 'ignore'],
      env: { ...process.env, CELLO_LOG_LEVEL: traceFile ? 'debug' : 'error' },
    },
  );
  const address = await new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error('agent did not start within 20 s')), 20_000);
    daemon.stdout.on('data', (b) => {
      out += b;
      const m = /listening (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
    daemon.on('exit', (code) => reject(new Error(`agent exited with ${code}`)));
  });
  agent = {
    address,
    runDir,
    close: async () => {
      daemon.kill('SIGTERM');
      await new Promise((r) => daemon.on('exit', r));
    },
  };
}
const client = connectAgent(agent.address, undefined);

const stream = client.watchStatus({});
let last;
const waiters = new Set();
stream.on('data', (e) => {
  if (e.kind?.$case !== 'status') return;
  last = e.kind.value;
  for (const w of waiters) w();
});
stream.on('error', () => {});

function untilRunning(uid) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('unit not running within 60 s')), 60_000);
    const check = () => {
      const c = last?.status?.containerStatuses?.[0];
      if (last?.podUid === uid && c?.state?.state?.$case === 'running') {
        clearTimeout(t);
        waiters.delete(check);
        resolve(c);
      }
    };
    waiters.add(check);
    check();
  });
}

const call = (m, req) => new Promise((res, rej) => client[m](req, (err, r) => (err ? rej(err) : res(r))));

let gen = 1;
const applyMs = [];
async function onePod(i, keep = false) {
  const uid = `bench-${i}-${Date.now()}`;
  const pod = Pod.fromPartial({
    metadata: { name: `bench-${i}`, uid },
    spec: { terminationGracePeriodSeconds: 0, containers: [{ name: 'u', image: ref, command: ['sleep', '3600'] }] },
  });
  const t0 = performance.now();
  await call('applyPod', ApplyPodRequest.fromPartial({ pod, generation: gen++ }));
  applyMs.push(performance.now() - t0);
  const st = await untilRunning(uid);
  const ms = performance.now() - t0;
  if (!keep) await call('deletePod', { gracePeriodSeconds: 0 });
  return { ms, st };
}

// Cold: nothing cached yet. Keep it running to take its bundle for the bare runc runs.
const cold = await onePod(0, true);
const rec = JSON.parse(readFileSync(join(stateDir, 'units/u/unit.json'), 'utf8'));
const spec = JSON.parse(readFileSync(join(agent.runDir, 'units/u', `i${rec.current.instance}`, 'config.json'), 'utf8'));
await call('deletePod', { gracePeriodSeconds: 0 });

// On the same filesystem as the agent's runc root (STATE/runc).
const runcRoot = mkdtempSync(join(tmpdir(), 'bench-runc-'));
function bareRun(i) {
  const b = mkdtempSync(join(tmpdir(), 'bench-bundle-'));
  for (const d of ['upper', 'work', 'rootfs']) mkdirSync(join(b, d));
  // The agent's own spec: runc mounts the image layers' overlay at "/" (first mount).
  const mounts = spec.mounts
    .filter((m) => m.type !== 'bind') // the pod's files and volumes are the agent's
    .map((m) =>
      m.destination === '/' ? { ...m, options: m.options.map((o) => (o.startsWith('upperdir=') ? `upperdir=${b}/upper` : o.startsWith('workdir=') ? `workdir=${b}/work` : o)) } : m,
    );
  const s = { ...spec, mounts, root: { path: join(b, 'rootfs'), readonly: false }, linux: { ...spec.linux, cgroupsPath: `/cello-bench/bare/c${i}` } };
  writeFileSync(join(b, 'config.json'), JSON.stringify(s));
  const t0 = performance.now();
  const r = spawnSync('runc', ['--root', runcRoot, 'run', '-d', '--bundle', b, `bare${i}`], { stdio: 'ignore' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`bare runc run failed (${r.status})`);
  spawnSync('runc', ['--root', runcRoot, 'kill', `bare${i}`, 'KILL']);
  spawnSync('runc', ['--root', runcRoot, 'delete', '--force', `bare${i}`]);
  rmSync(b, { recursive: true, force: true });
  return ms;
}

// Warm, interleaved with bare runc so that both see the same load on a shared machine.
const warm = [];
const bare = [];
for (let i = 1; i <= N; i++) {
  warm.push((await onePod(i)).ms);
  bare.push(bareRun(i));
}

stream.cancel();
client.close();
await agent.close();
await registry.stop();
rmSync(stateDir, { recursive: true, force: true });
rmSync(runDir, { recursive: true, force: true });
rmSync(runcRoot, { recursive: true, force: true });

const p50 = pct(warm, 50);
const bp50 = pct(bare, 50);
console.log(
  `cell-agent: ApplyPod -> unit running (busybox, ${N} pods one after another; agent ${daemon ? 'as its own process' : 'in the client process'}; load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs)`,
);
console.log(`  cold (pull + unpack + start) : ${fmt(cold.ms)}`);
console.log(`  warm (cached image)          : p50 ${fmt(p50)}   p99 ${fmt(pct(warm, 99))}   min ${fmt(Math.min(...warm))}   max ${fmt(Math.max(...warm))}`);
console.log(`  bare runc run -d, same bundle: p50 ${fmt(bp50)}   p99 ${fmt(pct(bare, 99))}`);
console.log(`  agent overhead at p50        : ${fmt(p50 - bp50)} (goal: < 50 ms)`);
if (traceFile) {
  const rows = readFileSync(traceFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
  const col = (k) => rows.filter((r) => r[k] !== undefined).map((r) => r[k]);
  console.log(
    `  breakdown p50: ApplyPod RPC ${fmt(pct(applyMs, 50))} (in the agent ${fmt(pct(col('applyMs'), 50))}: state ${fmt(pct(col('stateMs'), 50))}, pod files ${fmt(pct(col('podFilesMs'), 50))}, volumes ${fmt(pct(col('volumesMs'), 50))}), image ${fmt(pct(col('imageMs'), 50))}, prepare ${fmt(pct(col('prepareMs'), 50))}, spec ${fmt(pct(col('specMs'), 50))}, shim+runc to pid file ${fmt(pct(col('runcMs'), 50))}`,
  );
  rmSync(traceFile, { force: true });
}
