#!/usr/bin/env node
// npm run bench:streams — the cell agent's stream paths over loopback gRPC, each beside its
// baseline measured in the same run:
//   1. logs: MB/s from a runc unit's stdout to a following Logs client, vs the raw pipe rate of
//      the same writer (runc unit stdout read and discarded);
//   2. follow latency: a line handed to the unit's log sink -> the following client has it
//      (p50/p99), and Logs request -> first chunk;
//   3. exec keystroke round trip with a tty (byte in -> its echo back out), p50/p99;
//   4. port-forward download MB/s through the real `ctl port-forward` process vs a direct TCP
//      connection inside the same network namespace (reader processes identical): through the
//      agent's stream port (PortForwardTicket, what ctl uses by default) and over the PortForward
//      gRPC stream (`--no-stream-port`, the path the controller and the kubelet API use).
// Clients run as separate processes (as kubectl/ctl would), except for the latency probes.
// Goals (issue 5): logs >= 50% of raw pipe; keystroke p50 < 2 ms; port-forward >= 50% of direct.
// Needs root, runc, busybox, nsenter, ip, and the built package (npx turbo run build --filter=@cello/cell-agent...).
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { credentials, Server, ServerCredentials } from '@grpc/grpc-js';
import pino from 'pino';
import { CellAgentClient, ExecInput, LogsRequest } from '@cello/proto/cell';

const dist = new URL('../../packages/cell-agent/dist/', import.meta.url);
const { ContainerLogs } = await import(new URL('logs/index.js', dist).href);
const { createStreamHandlers } = await import(new URL('server/stream-handlers.js', dist).href);
// The agent serves this definition (bulk frames serialized by hand), not the generated one.
const { cellAgentServiceDefinition } = await import(new URL('server/wire.js', dist).href);

const LOG_MB = Number(process.env.BENCH_LOG_MB ?? 200);
const PF_MB = Number(process.env.BENCH_PF_MB ?? 300);
const KEYS = Number(process.env.BENCH_KEYS ?? 300);
// BENCH_ONLY=logs,follow,exec,pf runs a subset (for profiling one path); the default runs all.
// BENCH_CHILD_ARGS="--cpu-prof --cpu-prof-dir=D" profiles the client processes (follower, ctl port-forward).
const CHILD_ARGS = (process.env.BENCH_CHILD_ARGS ?? '').split(' ').filter(Boolean);
const ONLY = new Set((process.env.BENCH_ONLY ?? 'logs,follow,exec,pf').split(','));
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const mbs = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(0);

const base = mkdtempSync(join(tmpdir(), 'bench-streams-'));
const runcRoot = join(base, 'runc');
const netns = `bench-streams-${process.pid}`;
execFileSync('ip', ['netns', 'add', netns]);
execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
const netnsPath = `/run/netns/${netns}`;

// ---- a busybox bundle and a minimal unit directory over real runc containers ----
const bundle = join(base, 'bundle');
const rootfs = join(bundle, 'rootfs');
for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp', 'etc']) mkdirSync(join(rootfs, d), { recursive: true });
copyFileSync('/usr/bin/busybox', join(rootfs, 'bin/busybox'));
chmodSync(join(rootfs, 'bin/busybox'), 0o755);
for (const a of execFileSync('/usr/bin/busybox', ['--list'], { encoding: 'utf8' })
  .split('\n')
  .filter((x) => x && x !== 'busybox'))
  symlinkSync('busybox', join(rootfs, 'bin', a));
execFileSync('runc', ['spec'], { cwd: bundle });
function writeConfig(args) {
  const c = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8'));
  c.process.terminal = false;
  c.process.args = args;
  c.process.env = ['PATH=/bin', 'TERM=xterm'];
  c.root.readonly = false;
  c.linux.namespaces = c.linux.namespaces.map((n) => (n.type === 'network' ? { type: 'network', path: netnsPath } : n));
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(c));
}
let seq = 0;
/** Runs the unit in the foreground; `onOut` gets its stdout; resolves when it exits. */
function runUnit(args, onOut) {
  writeConfig(args);
  const id = `bench-${process.pid}-${++seq}`;
  const p = spawn('runc', ['--root', runcRoot, 'run', '--bundle', bundle, id], { stdio: ['ignore', 'pipe', 'inherit'] });
  p.stdout.on('data', onOut);
  return { id, exited: new Promise((r) => p.on('close', r)), proc: p };
}
async function runningPid(id) {
  for (let i = 0; i < 500; i++) {
    try {
      const st = JSON.parse(execFileSync('runc', ['--root', runcRoot, 'state', id], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
      if (st.status === 'running') return st.pid;
    } catch {
      // not created yet
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${id} did not start`);
}

const units = new Map();
const dir = { get: (n) => units.get(n), list: () => [...units.values()], netnsPath: () => netnsPath };
const view = (name, id, logs) => ({
  name,
  stdin: false,
  tty: false,
  logs,
  running: () => true,
  runc: () => ({ root: runcRoot, id }),
  pid: () => undefined,
  cgroupPath: () => '/',
  restartCount: () => 0,
  startedAt: () => new Date(),
  memoryLimitBytes: () => undefined,
  attach: () => undefined,
});

// The port-forward stream port, wired as agent.ts does (plaintext, like the gRPC server here).
const { PortForwarder } = await import(new URL('portforward/index.js', dist).href);
const { startPortForwardStreamListener } = await import(new URL('portforward/stream-listener.js', dist).href);
const forwarder = new PortForwarder();
const pfStream = await startPortForwardStreamListener({ host: '127.0.0.1', port: 0, connect: (p) => forwarder.connect(netnsPath, p), logger: pino({ level: 'silent' }) });
const handlers = createStreamHandlers({ units: dir, logsFor: (n) => units.get(n)?.logs, logger: pino({ level: 'silent' }), forwarder, portForwardStream: pfStream });
// The agent's own server options (agent.ts).
const server = new Server({ 'grpc.max_receive_message_length': 64 << 20 });
const { close: closeHandlers, statsCollector: _s, ...impl } = handlers;
server.addService(cellAgentServiceDefinition, impl);
const port = await new Promise((res, rej) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
// A large receive window: the default 64 KiB HTTP/2 window caps a stream at one window per RTT.
const client = new CellAgentClient(`127.0.0.1:${port}`, credentials.createInsecure(), { 'grpc-node.flow_control_window': 16 << 20 });
const results = {};
const FOLLOWER = `
const { credentials } = require('@grpc/grpc-js');
import('@cello/proto/cell').then(({ CellAgentClient, LogsRequest }) => {
  const c = new CellAgentClient('127.0.0.1:' + process.argv[1], credentials.createInsecure(), { 'grpc-node.flow_control_window': 16 << 20 });
  let bytes = 0, dropped = 0;
  // Packed chunks (LogsRequest.packed), as ctl asks for them; BENCH_LOG_ENTRIES=1: one entry per line.
  const packed = !process.env.BENCH_LOG_ENTRIES;
  const call = c.logs(LogsRequest.fromPartial({ container: 'tp', follow: true, packed }));
  call.on('data', (ch) => {
    dropped += ch.droppedBytes;
    for (const e of ch.entries) bytes += e.line.length + (e.partial ? 0 : 1);
    bytes += ch.packedText.length; // the lines as printed
  });
  call.on('end', () => { const u = process.cpuUsage(); console.log(JSON.stringify({ bytes, dropped, cpuMs: (u.user + u.system) / 1000 })); process.exit(0); });
  call.on('error', (e) => { console.error(e); process.exit(1); });
  console.log('ready');
});`;

try {
  // ---- 1. log throughput ----
  if (ONLY.has('logs')) {
    process.stderr.write('bench: logs\n');
    const line = 'x'.repeat(99); // 100-byte lines
    // Two writers: `yes` costs nothing per line (worst case for the ratio); awk formats each line
    // like an application logging requests would (~100 bytes).
    const lines = Math.round((LOG_MB * 1_000_000) / 100);
    const allWriters = {
      yes: ['sh', '-c', `yes ${line} | head -c ${LOG_MB * 1_000_000}`],
      awk: [
        'awk',
        `BEGIN { for (i = 0; i < ${lines}; i++) printf "2026-01-01T00:00:00Z level=info msg=\\"served\\" path=/api/v1/items/%08d status=200 bytes=%06d\\n", i, i % 999999 }`,
      ],
    };
    // BENCH_WRITERS=yes (or awk) runs one writer only.
    const writers = Object.fromEntries(Object.entries(allWriters).filter(([w]) => (process.env.BENCH_WRITERS ?? 'yes,awk').split(',').includes(w)));
    results.logs = {};
    for (const [wname, writer] of Object.entries(writers)) {
      // Timed from the first byte, so runc's start-up is not part of either figure.
      const rawRun = async () => {
        let n = 0;
        let t0;
        const cpu0 = process.cpuUsage();
        await runUnit(writer, (d) => {
          t0 ??= performance.now();
          n += d.length;
        }).exited;
        const cpu = process.cpuUsage(cpu0);
        return { bytes: n, ms: performance.now() - t0, cpuMs: (cpu.user + cpu.system) / 1000 };
      };
      // The raw pipe is measured before and after the logs run and the faster one is the
      // baseline: on a shared machine a dip during one raw run must not flatter the logs figure.
      const rawBefore = await rawRun();
      const logs = new ContainerLogs({ dir: join(base, `logs-${wname}`), maxFileBytes: 64 << 20, maxFiles: 6 });
      const sink = logs.startInstance();
      units.set('tp', view('tp', 'x', logs));
      // The following client is its own process, as kubectl/ctl would be.
      const follower = spawn(process.execPath, [...CHILD_ARGS, '-e', FOLLOWER, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      follower.stdout.on('data', (d) => (out += d));
      await new Promise((r) => follower.stdout.once('data', r)); // "ready"
      let t0;
      const cpu0 = process.cpuUsage();
      await runUnit(writer, (d) => {
        t0 ??= performance.now();
        sink.write('stdout', d);
      }).exited;
      sink.end();
      await new Promise((r) => follower.on('close', r));
      const ms = performance.now() - t0;
      const res = JSON.parse(out.split('\n').filter(Boolean).at(-1));
      const cpu = process.cpuUsage(cpu0);
      const rawAfter = await rawRun();
      const raw = rawBefore.bytes / rawBefore.ms >= rawAfter.bytes / rawAfter.ms ? rawBefore : rawAfter;
      results.logs[wname] = { raw, logs: { bytes: res.bytes, ms, dropped: res.dropped, agentCpuMs: (cpu.user + cpu.system) / 1000, clientCpuMs: res.cpuMs } };
    }
  }

  // ---- 2. follow latency ----
  if (ONLY.has('follow')) {
    process.stderr.write('bench: follow latency\n');
    const logs = new ContainerLogs({ dir: join(base, 'logs-lat') });
    const sink = logs.startInstance();
    sink.write('stdout', Buffer.from('existing line\n'));
    units.set('lat', view('lat', 'x', logs));
    const t0 = performance.now();
    const call = client.logs(LogsRequest.fromPartial({ container: 'lat', follow: true }));
    let pending;
    let firstChunk;
    call.on('data', () => {
      if (firstChunk === undefined) firstChunk = performance.now() - t0;
      pending?.();
    });
    await new Promise((r) => (pending = r));
    const lat = [];
    for (let i = 0; i < 200; i++) {
      const got = new Promise((r) => (pending = r));
      const s = performance.now();
      sink.write('stdout', Buffer.from(`tick ${i}\n`));
      await got;
      lat.push(performance.now() - s);
    }
    sink.end();
    results.follow = { firstChunk, p50: pct(lat, 50), p99: pct(lat, 99) };
  }

  // ---- 3. exec keystroke round trip (tty) ----
  if (ONLY.has('exec')) {
    process.stderr.write('bench: exec keystrokes\n');
    const u = runUnit(['sleep', '100000'], () => {});
    await runningPid(u.id);
    units.set('sh', view('sh', u.id, undefined));
    const call = client.exec();
    let waiter;
    let out = '';
    call.on('data', (m) => {
      if (m.frame?.$case === 'stdout') {
        out += m.frame.value.toString('latin1');
        waiter?.();
      }
    });
    call.on('error', () => {});
    // The container's terminal echoes each byte (cooked mode) and `cat` reads it: a keystroke's
    // echo comes back through runc, the pty and gRPC, like typing into a shell.
    call.write(
      ExecInput.fromPartial({
        frame: { $case: 'start', value: { container: 'sh', command: ['sh', '-c', 'echo ready; exec cat >/dev/null'], tty: true, stdin: true, size: { columns: 80, rows: 24 } } },
      }),
    );
    while (!out.includes('ready')) await new Promise((r) => (waiter = r));
    const rtt = [];
    for (let i = 0; i < KEYS; i++) {
      const ch = String.fromCharCode(97 + (i % 26));
      out = '';
      const s = performance.now();
      call.write(ExecInput.fromPartial({ frame: { $case: 'stdin', value: Buffer.from(ch) } }));
      while (!out.includes(ch)) await new Promise((r) => (waiter = r));
      rtt.push(performance.now() - s);
      if (i % 50 === 49) call.write(ExecInput.fromPartial({ frame: { $case: 'stdin', value: Buffer.from('\r') } }));
    }
    results.keystroke = { p50: pct(rtt, 50), p99: pct(rtt, 99), n: rtt.length };
    call.cancel();
    execFileSync('runc', ['--root', runcRoot, 'kill', u.id, 'KILL']);
    await u.exited;
  }

  // ---- 4. port-forward vs direct TCP in the pod's namespace ----
  if (ONLY.has('pf')) {
    process.stderr.write('bench: port-forward\n');
    const total = PF_MB * 1_000_000;
    const srvCode = `const n=require('net');const b=Buffer.alloc(1<<20,97);n.createServer(c=>{let left=${total};const w=()=>{while(left>0){const k=Math.min(left,b.length);left-=k;if(!c.write(k===b.length?b:b.subarray(0,k)))return c.once('drain',w)}c.end()};w();c.on('error',()=>{})}).listen(7777,'127.0.0.1',()=>process.stdout.write('up\\n'))`;
    const srv = spawn('nsenter', [`--net=${netnsPath}`, process.execPath, '-e', srvCode], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => srv.stdout.once('data', r));
    const cliCode = `const n=require('net');const t=process.hrtime.bigint();let g=0;const c=n.connect(7777,'127.0.0.1');c.on('data',d=>g+=d.length);c.on('end',()=>{console.log(JSON.stringify({bytes:g,ms:Number(process.hrtime.bigint()-t)/1e6}))})`;
    // (async: this process serves the port-forward and must not block while a reader runs)
    const run = (args) =>
      new Promise((res, rej) => {
        const p = spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
        let o = '';
        p.stdout.on('data', (d) => (o += d));
        p.on('close', (code) => (code === 0 ? res(JSON.parse(o)) : rej(new Error(`reader exited ${code}`))));
      });
    const directRun = () => run(['nsenter', `--net=${netnsPath}`, process.execPath, '-e', cliCode]);
    const directBefore = await directRun();
    // Forwarder: the real `cell-agent ctl port-forward` process; reader: its own process too.
    const cli = new URL('../../packages/cell-agent/dist/cli.js', import.meta.url).pathname;
    const viaCtl = async (extra) => {
      const fwd = process.env.BENCH_PF_WINDOW
        ? spawn(
            process.execPath,
            [
              ...CHILD_ARGS,
              '--input-type=module',
              '-e',
              `
            import { credentials } from '@grpc/grpc-js';
            import { CellAgentClient } from '@cello/proto/cell';
            const { forwardPort } = await import(${JSON.stringify(new URL('ctl/streams.js', dist).href)});
            const c = new CellAgentClient('127.0.0.1:${port}', credentials.createInsecure(), { 'grpc-node.flow_control_window': ${Number(process.env.BENCH_PF_WINDOW)} });
            const f = await forwardPort(c, { host: '127.0.0.1', localPort: 0, remotePort: 7777, onConnection: (p) => console.log('Handling connection for 7777 (' + p + ')') });
            console.log('Forwarding from 127.0.0.1:' + f.localPort);`,
            ],
            { stdio: ['ignore', 'pipe', 'inherit'] },
          )
        : spawn(process.execPath, [...CHILD_ARGS, cli, 'ctl', '--addr', `127.0.0.1:${port}`, '--insecure-dev', 'port-forward', ':7777', ...extra], {
            stdio: ['ignore', 'pipe', 'inherit'],
          });
      let fout = '';
      fwd.stdout.on('data', (d) => (fout += d));
      while (!/127\.0\.0\.1:(\d+)/.test(fout)) await new Promise((r) => fwd.stdout.once('data', r));
      const localPort = Number(/127\.0\.0\.1:(\d+)/.exec(fout)[1]);
      const readerCode = cliCode.replace('7777', String(localPort));
      // (async: this process is the agent and must keep serving while the reader runs)
      const read = () => run([process.execPath, '-e', readerCode]);
      await read(); // warm: starts the namespace relay
      // CPU per MB of the two relays (this process is the agent; ctl from /proc): unlike MB/s
      // it hardly depends on what else the shared machine runs.
      const ctlCpu = () =>
        readFileSync(`/proc/${fwd.pid}/stat`, 'utf8')
          .split(') ')[1]
          .split(' ')
          .slice(11, 13)
          .reduce((a, x) => a + Number(x), 0) * 10;
      const agent0 = process.cpuUsage();
      const ctl0 = ctlCpu();
      const r = await read();
      const agentCpu = process.cpuUsage(agent0);
      r.agentCpuMs = (agentCpu.user + agentCpu.system) / 1000;
      r.ctlCpuMs = ctlCpu() - ctl0;
      fwd.kill('SIGINT');
      // ctl announces each connection with the path it took.
      const paths = [...fout.matchAll(/Handling connection for \d+ \(([^)]+)\)/g)].map((m) => m[1]);
      return { ...r, path: paths.at(-1) ?? 'unknown' };
    };
    const viaPf = await viaCtl([]);
    const viaGrpc = process.env.BENCH_PF_WINDOW ? undefined : await viaCtl(['--no-stream-port']);
    // Direct again after: the faster direct run is the baseline (see the logs section).
    const directAfter = await directRun();
    const direct = directBefore.bytes / directBefore.ms >= directAfter.bytes / directAfter.ms ? directBefore : directAfter;
    srv.kill();
    results.portForward = { direct, viaPf, viaGrpc };
  }
} finally {
  client.close();
  closeHandlers();
  await pfStream.close();
  server.forceShutdown();
  try {
    execFileSync('ip', ['netns', 'del', netns]);
  } catch {
    // already gone
  }
  rmSync(base, { recursive: true, force: true });
}

const r = results;
const out = [];
for (const [w, x] of Object.entries(r.logs ?? {})) {
  const pctRaw = (100 * (x.logs.bytes / x.logs.ms)) / (x.raw.bytes / x.raw.ms);
  out.push(
    `  logs (${w} writer) -> following Logs client : ${mbs(x.logs.bytes, x.logs.ms)} MB/s (${(x.logs.bytes / 1e6).toFixed(0)} MB, dropped ${x.logs.dropped} B); raw pipe of the same writer ${mbs(x.raw.bytes, x.raw.ms)} MB/s (faster of the runs before and after) -> ${pctRaw.toFixed(0)}% (goal >= 50%)`,
  );
  // CPU per MB does not depend on what else the machine runs: it shows the work itself.
  out.push(
    `      CPU per MB: agent ${(x.logs.agentCpuMs / (x.logs.bytes / 1e6)).toFixed(1)} ms (capture + serve; the writer's pipe is read in this process either way), client ${(x.logs.clientCpuMs / (x.logs.bytes / 1e6)).toFixed(1)} ms; raw pipe reader ${(x.raw.cpuMs / (x.raw.bytes / 1e6)).toFixed(1)} ms`,
  );
}
if (r.follow) {
  out.push(`  follow: request -> first chunk            : ${r.follow.firstChunk.toFixed(2)} ms`);
  out.push(`  follow: line written -> client has it     : p50 ${r.follow.p50.toFixed(2)} ms, p99 ${r.follow.p99.toFixed(2)} ms`);
}
if (r.keystroke) out.push(`  exec tty keystroke round trip (${r.keystroke.n})      : p50 ${r.keystroke.p50.toFixed(2)} ms, p99 ${r.keystroke.p99.toFixed(2)} ms (goal p50 < 2 ms)`);
if (r.portForward) {
  const pfPct = (100 * (r.portForward.viaPf.bytes / r.portForward.viaPf.ms)) / (r.portForward.direct.bytes / r.portForward.direct.ms);
  const cpu = (x) => `CPU per MB: agent ${(x.agentCpuMs / (x.bytes / 1e6)).toFixed(2)} ms, ctl ${(x.ctlCpuMs / (x.bytes / 1e6)).toFixed(2)} ms`;
  out.push(
    `  port-forward download (${PF_MB} MB)            : ${mbs(r.portForward.viaPf.bytes, r.portForward.viaPf.ms)} MB/s (ctl took the ${r.portForward.viaPf.path} path; ${cpu(r.portForward.viaPf)})`,
  );
  if (r.portForward.viaGrpc)
    out.push(
      `  port-forward, ctl --no-stream-port        : ${mbs(r.portForward.viaGrpc.bytes, r.portForward.viaGrpc.ms)} MB/s (ctl took the ${r.portForward.viaGrpc.path} path; ${cpu(r.portForward.viaGrpc)})`,
    );
  out.push(
    `  direct TCP in the pod namespace           : ${mbs(r.portForward.direct.bytes, r.portForward.direct.ms)} MB/s (faster of the runs before and after) -> port-forward at ${pfPct.toFixed(0)}% of direct (goal >= 50%)`,
  );
}
console.log(`
cell-agent streams benchmark (loopback gRPC, plaintext; ${process.env.BENCH_NOTE ?? 'shared 2-core machine'}; load average ${(await import('node:os')).loadavg()[0].toFixed(1)})
${out.join('\n')}
`);
process.exit(0);
