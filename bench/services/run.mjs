#!/usr/bin/env node
// npm run bench:services — the cell's Service proxy (nftables) in a real network namespace:
//   1. the full ruleset for S Services x E endpoints applied from nothing, p50/p99 of wall time
//      and of CPU (agent + nsenter + nft): "first" is a fresh agent process's first apply, its
//      JavaScript not yet compiled (BENCH_COLD processes, one apply each), "warm" a full apply by
//      a new proxy in a process that has applied before (BENCH_WARM applies);
//   2. one endpoint change, applied as the proxy does it (a partial transaction), p50/p99 over
//      100 changes — beside the baseline of rewriting the whole table for each change (what an
//      iptables-restore style proxy does), measured in the same run.
// Goals (issue 15): 1,000 Services x 3 endpoints in < 100 ms; a change costs O(changed).
// Needs root, nft (apt-get install -y nftables), ip, nsenter, and the built cell-agent
// (npx turbo run build --filter=@cello/cell-agent).
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';

const dist = new URL('../../packages/cell-agent/dist/network/services/', import.meta.url);
const { ServiceProxy } = await import(new URL('index.js', dist).href);
const { renderServices } = await import(new URL('ruleset.js', dist).href);
const { fullTransaction } = await import(new URL('transaction.js', dist).href);
const { runNft } = await import(new URL('nft.js', dist).href);

const SERVICES = Number(process.env.BENCH_SERVICES ?? 1000);
const ENDPOINTS = Number(process.env.BENCH_ENDPOINTS ?? 3);
const CHANGES = Number(process.env.BENCH_CHANGES ?? 100);
const COLD = Number(process.env.BENCH_COLD ?? 10);
const WARM = Number(process.env.BENCH_WARM ?? 20);
// `--first NS`: this process is one cold agent: it applies the full ruleset once in NS and prints
// {wallMs, cpuMs} as JSON (see coldApply below).
const firstIn = process.argv[2] === '--first' ? process.argv[3] : undefined;
const ns = firstIn ?? `cello-bench-svc-${process.pid}`;
const netnsPath = `/run/netns/${ns}`;

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const ms = (x) => `${x.toFixed(1)} ms`;

/**
 * CPU time of this process and of its waited-for children (nsenter, nft), in ms: the cost of an
 * apply whatever the machine's load. Children's time comes from /proc/self/stat (cutime, cstime;
 * clock ticks, 10 ms resolution), hence averaged over several applies.
 */
function cpuMs() {
  const own = process.cpuUsage();
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  const ticks = Number(fields[13]) + Number(fields[14]);
  return (own.user + own.system) / 1000 + ticks * 10;
}

/** CPU time of the waited-for children alone (nft and nsenter), in ms (10 ms ticks). */
function childCpuMs() {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(fields[13]) + Number(fields[14])) * 10;
}

function snapshot() {
  const services = [];
  const slices = [];
  for (let i = 0; i < SERVICES; i++) {
    const name = `s${i}`;
    services.push({
      namespace: 'bench',
      name,
      clusterIPs: [`10.96.${i >> 8}.${i & 255}`],
      externalIPs: [],
      ports: [{ name: 'http', protocol: 'TCP', port: 80 }],
      externalTrafficPolicy: 'Cluster',
      internalTrafficPolicy: 'Cluster',
    });
    const endpoints = [];
    for (let e = 0; e < ENDPOINTS; e++) {
      endpoints.push({ addresses: [`10.${100 + (i >> 8)}.${i & 255}.${e + 1}`], ready: true, serving: true, terminating: false });
    }
    slices.push({ namespace: 'bench', service: name, name: `${name}-x`, ports: [{ name: 'http', protocol: 'TCP', port: 8080 }], endpoints });
  }
  return { services, slices };
}

// Service `shift` has its last endpoint moved: one endpoint change. Only that slice is a new
// object; the others are the same objects, as the agent's ServiceState keeps them when a delta
// names one EndpointSlice (the proxy renders only Services whose objects changed).
function withMovedEndpoint(base, shift) {
  const slices = base.slices.map((s, i) =>
    i !== shift ? s : { ...s, endpoints: s.endpoints.map((ep, e) => (e !== ENDPOINTS - 1 ? ep : { ...ep, addresses: [ep.addresses[0].replace(/\.\d+$/, '.250')] })) },
  );
  return { services: base.services, slices };
}

if (firstIn) {
  // By its first Service sync an agent has already started processes (its warm runc shim at
  // boot), so Node's child-process machinery is loaded; only the Service code is cold.
  await promisify(execFile)('nft', ['--version']);
  const base = snapshot();
  const proxy = new ServiceProxy({ netnsPath, localAddresses: () => [] });
  const c = cpuMs();
  const t = performance.now();
  await proxy.sync(base);
  const wallMs = performance.now() - t;
  console.log(JSON.stringify({ wallMs, cpuMs: cpuMs() - c }));
  await proxy.close();
  process.exit(0);
}

const figures = (xs) => `p50 ${ms(pct(xs, 50))}, p99 ${ms(pct(xs, 99))}`;

// Wall times on a shared machine follow its load: print it beside the figures.
console.log(
  `load average at start: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`,
);
execFileSync('ip', ['netns', 'add', ns]);
try {
  const base = snapshot();
  let lines = 0;
  // First applies: one fresh process each (the table is replaced by each, as a full sync does).
  const firstWall = [];
  const firstCpu = [];
  for (let r = 0; r < COLD; r++) {
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--first', ns], { encoding: 'utf8' });
    const { wallMs, cpuMs: cpu } = JSON.parse(out.trim().split('\n').pop());
    firstWall.push(wallMs);
    firstCpu.push(cpu);
  }
  // Warm full applies: a new proxy each time (nothing cached), in this process.
  const warmWall = [];
  const warmCpu = [];
  for (let r = 0; r < WARM + 1; r++) {
    const proxy = new ServiceProxy({ netnsPath, localAddresses: () => [], onSync: (s) => (lines = s.commands) });
    const c = cpuMs();
    const t = performance.now();
    await proxy.sync(base);
    // The first one here is this process's first: warm-up, not counted.
    if (r > 0) {
      warmWall.push(performance.now() - t);
      warmCpu.push(cpuMs() - c);
    }
    await proxy.close();
  }
  console.log(`full ruleset, ${SERVICES} Services x ${ENDPOINTS} endpoints (${lines} nft commands); goal < 100 ms`);
  // Wall time on a loaded machine is mostly waiting for a core; the CPU spent is not (children's
  // CPU comes in 10 ms ticks).
  console.log(`  first apply of a fresh agent (${COLD} processes): wall ${figures(firstWall)}; CPU (agent + nsenter + nft) ${figures(firstCpu)}`);
  console.log(`  warm full apply (${WARM} applies):              wall ${figures(warmWall)}; CPU (agent + nsenter + nft) ${figures(warmCpu)}`);
  // The same transaction through nft alone (with its nsenter): the kernel and nft's parsing,
  // without the agent's rendering.
  const tx = fullTransaction(renderServices(base, new Set()));
  const child0 = childCpuMs();
  for (let r = 0; r < 10; r++) await runNft(tx, { netnsPath });
  console.log(`  of which nft + nsenter alone: ${ms((childCpuMs() - child0) / 10)} CPU per apply (${tx.length} bytes of ruleset)`);
  // The agent's own part, in-process: rendering the snapshot and writing the transaction.
  const renderCpu = [];
  for (let r = 0; r < WARM; r++) {
    const c = process.cpuUsage();
    fullTransaction(renderServices(base, new Set()));
    const d = process.cpuUsage(c);
    renderCpu.push((d.user + d.system) / 1000);
  }
  console.log(`  of which the agent's render (warm): CPU ${figures(renderCpu)}`);

  const proxy = new ServiceProxy({ netnsPath, localAddresses: () => [] });
  await proxy.sync(base);
  const partial = [];
  const partialCpu = [];
  const rewrite = [];
  for (let c = 0; c < CHANGES; c++) {
    const changed = withMovedEndpoint(base, c % SERVICES);
    const c0 = cpuMs();
    let t = performance.now();
    await proxy.sync(changed);
    partial.push(performance.now() - t);
    partialCpu.push(cpuMs() - c0);
    await proxy.sync(base);
    // The baseline: the same change applied by replacing the whole table.
    t = performance.now();
    await runNft(fullTransaction(renderServices(changed, new Set())), { netnsPath });
    rewrite.push(performance.now() - t);
    await runNft(fullTransaction(renderServices(base, new Set())), { netnsPath });
  }
  await proxy.close();
  console.log(`one endpoint change, partial transaction: wall ${figures(partial)}; CPU mean ${ms(partialCpu.reduce((a, b) => a + b, 0) / CHANGES)}`);
  console.log(`one endpoint change, whole-table rewrite:  wall ${figures(rewrite)}`);
  console.log(`ratio (partial / rewrite, p50): ${(pct(partial, 50) / pct(rewrite, 50)).toFixed(2)}x`);
  console.log(
    `load average at end: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
} finally {
  execFileSync('ip', ['netns', 'del', ns]);
}
