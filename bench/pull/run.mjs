#!/usr/bin/env node
// `npm run bench:pull`: pulls the 5-layer Debian fixture (about 100 MB gzip) from a local
// docker-registry, cold, warm and as a tag sharing 4 of its 5 layers, with
//   - image-puller (this repo): --rootfs (flattened) and --layers (overlay lower dirs),
//   - skopeo copy + umoci unpack,
//   - containerd's ctr image pull (overlayfs snapshotter),
// all in the same run, interleaved, and prints medians, ratios and peak RSS.
// Cold runs drop the page cache first. Env: BENCH_RUNS (default 3).
//
// Each contender writes to a fresh ext4 filesystem of its own in every run (a sparse file,
// loop-mounted; containerd is restarted with its root there), as a new cell's disk would be.
// Why: on a filesystem where many files were deleted in the last minutes, ext4 makes every new
// inode skip the recently deleted ones (ialloc.c recently_deleted), and creating a file cost
// 100-500 µs instead of ~15 µs here: whoever ran after a big `rm -rf` (the previous contender's
// trees) was timed on that, not on its own work.
import { spawnSync, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const { startRegistry, pushLayoutTag, buildFixtures, requireCommand, waitExit } = await import(join(repo, 'packages', 'testkit', 'dist', 'index.js'));
const CLI = join(repo, 'packages', 'image-puller', 'dist', 'image-puller.js'); // the bundled CLI, as installed
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

for (const [c, p] of [['skopeo', 'skopeo'], ['umoci', 'umoci'], ['containerd', 'containerd'], ['ctr', 'containerd'], ['/usr/bin/time', 'time'], ['mkfs.ext4', 'e2fsprogs']]) requireCommand(c, p);
if (!existsSync(CLI)) throw new Error(`build first: npx turbo run build --filter=@cello/image-puller (${CLI} missing)`);
if (process.getuid() !== 0) throw new Error('the benchmark needs root (overlay snapshots, page cache drops, ownership)');

const work = mkdtempSync(join(tmpdir(), 'bench-pull-'));
const log = (m) => process.stderr.write(`[bench] ${m}\n`);

function dropCaches() {
  spawnSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
}

/** Runs a shell command under GNU time; returns wall seconds, CPU seconds and peak RSS (MiB). */
function measure(cmd) {
  const out = join(work, 'time.txt');
  const r = spawnSync('/usr/bin/time', ['-o', out, '-f', '%e %U %S %M', 'sh', '-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env } });
  if (r.status !== 0) throw new Error(`failed (${r.status}): ${cmd}\n${r.stderr.toString().slice(-2000)}`);
  const [e, u, s, m] = readFileSync(out, 'utf8').trim().split('\n').pop().split(' ').map(Number);
  return { wall: e, cpu: u + s, rssMiB: m / 1024 };
}

/** GNU time reports only the largest process of a pipeline; sh -c 'a && b' measures each step's peak. */
const sh = (...parts) => parts.join(' && ');

const fixtures = await buildFixtures('debian');
const registry = await startRegistry();
const ref = await pushLayoutTag(registry, fixtures.layout, 'bench-gzip', 'bench/debian:gzip');
const shared = await pushLayoutTag(registry, fixtures.layout, 'bench-shared', 'bench/debian:shared');
log(`registry ${registry.host}: ${ref}, ${shared}`);

/** A fresh, empty ext4 filesystem mounted at work/NAME (see the header for why). */
const mounts = new Set();
function freshFs(name) {
  const img = join(work, `${name}.img`);
  const dir = join(work, name);
  mkdirSync(dir);
  for (const [cmd, ...args] of [['truncate', '-s', '16G', img], ['mkfs.ext4', '-q', '-F', img], ['mount', '-o', 'loop', img, dir]]) {
    const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  }
  mounts.add(dir);
  return dir;
}
function dropFs(dir) {
  spawnSync('sh', ['-c', `grep -F ${JSON.stringify(dir)} /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l`]);
  mounts.delete(dir);
  rmSync(dir, { recursive: true, force: true });
  rmSync(`${dir}.img`, { force: true });
}

/** containerd with the overlayfs snapshotter, its root, state and socket under `dir`. */
async function startContainerd(dir) {
  const sock = join(dir, 'containerd.sock');
  writeFileSync(join(dir, 'config.toml'), [
    'version = 2',
    `root = "${dir}/root"`,
    `state = "${dir}/state"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
    '[grpc]', `  address = "${sock}"`,
  ].join('\n'));
  const proc = spawn('containerd', ['--config', join(dir, 'config.toml')], { stdio: ['ignore', 'ignore', 'ignore'] });
  for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(100);
  if (!existsSync(sock)) throw new Error('containerd did not start within 10 s');
  return { proc, ctr: `ctr -a ${sock} -n bench` };
}

/** containerd does the work of `ctr pull` in the daemon: add the daemon's CPU time (utime+stime). */
function daemonCpu(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // clock ticks, USER_HZ = 100
}
function withDaemonCpu(pid, fn) {
  const before = daemonCpu(pid);
  const m = fn();
  return { ...m, cpu: m.cpu + daemonCpu(pid) - before };
}

const results = {};
function record(name, m) {
  (results[name] ??= []).push(m);
  log(`${name}: ${m.wall.toFixed(2)} s wall, ${m.cpu.toFixed(2)} s cpu, ${m.rssMiB.toFixed(0)} MiB`);
}

try {
  for (let run = 0; run < RUNS; run++) {
    log(`run ${run + 1}/${RUNS} (load ${loadavg()[0].toFixed(1)})`);
    // image-puller, flattened rootfs
    const ours = freshFs('ours');
    dropCaches();
    record('image-puller rootfs cold', measure(`node ${CLI} pull ${ref} --plain-http --cache ${ours}/cache --rootfs ${ours}/rootfs1`));
    record('image-puller rootfs warm', measure(`node ${CLI} pull ${ref} --plain-http --cache ${ours}/cache --rootfs ${ours}/rootfs2`));
    record('image-puller rootfs shared-tag', measure(`node ${CLI} pull ${shared} --plain-http --cache ${ours}/cache --rootfs ${ours}/rootfs3`));
    // image-puller, overlay layers
    dropFs(ours);
    freshFs('ours');
    dropCaches();
    record('image-puller layers cold', measure(`node ${CLI} pull ${ref} --plain-http --cache ${ours}/cache --layers ${ours}/l1`));
    // The agent calls the library in a running process: time pull() itself for the shared-layer tag.
    const lib = JSON.parse(spawnSync(process.execPath, [join(here, 'inproc.mjs'), `${ours}/cache`, shared], { encoding: 'utf8' }).stdout);
    if (lib.fetchedLayers !== 1 || lib.unpackedLayers !== 1) throw new Error(`shared-layer tag fetched ${lib.fetchedLayers} / unpacked ${lib.unpackedLayers} layers, expected 1`);
    record('image-puller library shared-tag', { wall: lib.seconds, cpu: NaN, rssMiB: NaN });
    record('image-puller layers warm', measure(`node ${CLI} pull ${ref} --plain-http --cache ${ours}/cache --layers ${ours}/l2`));
    record('image-puller layers shared-tag', measure(`node ${CLI} pull ${shared} --plain-http --cache ${ours}/cache --layers ${ours}/l3`));
    dropFs(ours);

    // skopeo + umoci
    const su = freshFs('su');
    dropCaches();
    record('skopeo+umoci cold', measure(sh(`skopeo copy -q --src-tls-verify=false docker://${ref} oci:${su}/oci:img`, `umoci unpack --image ${su}/oci:img ${su}/b1 >/dev/null`)));
    record('skopeo+umoci warm', measure(sh(`skopeo copy -q --src-tls-verify=false docker://${ref} oci:${su}/oci:img`, `umoci unpack --image ${su}/oci:img ${su}/b2 >/dev/null`)));
    record('skopeo+umoci shared-tag', measure(sh(`skopeo copy -q --src-tls-verify=false docker://${shared} oci:${su}/oci:shared`, `umoci unpack --image ${su}/oci:shared ${su}/b3 >/dev/null`)));
    dropFs(su);

    // containerd, started afresh on its own filesystem
    const cd = freshFs('containerd');
    const { proc, ctr } = await startContainerd(cd);
    try {
      dropCaches();
      record('ctr cold', withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${ref} >/dev/null`)));
      record('ctr warm', withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${ref} >/dev/null`)));
      record('ctr shared-tag', withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${shared} >/dev/null`)));
    } finally {
      proc.kill('SIGTERM');
      await waitExit(proc, { what: 'containerd' });
      dropFs(cd);
    }
  }
} finally {
  await registry.stop();
  for (const dir of [...mounts]) dropFs(dir);
  rmSync(work, { recursive: true, force: true });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const med = (name, k = 'wall') => median(results[name].map((m) => m[k]));
const peak = (name) => Math.max(...results[name].map((m) => m.rssMiB));

// Like with like: a flattened rootfs (ours --rootfs, skopeo+umoci) and per-layer snapshots
// (ours --layers, ctr's overlayfs snapshots); each ratio is against the faster peer of the run.
const rows = [];
for (const phase of ['cold', 'warm', 'shared-tag']) {
  const su = med(`skopeo+umoci ${phase}`);
  const c = med(`ctr ${phase}`);
  const faster = Math.min(su, c);
  for (const mode of ['rootfs', 'layers']) {
    const name = `image-puller ${mode} ${phase}`;
    const o = med(name);
    rows.push({
      phase, 'image-puller': `--${mode}`,
      'ours s': o.toFixed(2), 'skopeo+umoci s': su.toFixed(2), 'ctr s': c.toFixed(2),
      'ours/faster peer': (o / faster).toFixed(2),
      'ours/same-kind peer': (o / (mode === 'rootfs' ? su : c)).toFixed(2),
      'cpu s ours/su/ctr+daemon': `${med(name, 'cpu').toFixed(2)}/${med(`skopeo+umoci ${phase}`, 'cpu').toFixed(2)}/${med(`ctr ${phase}`, 'cpu').toFixed(2)}`,
      'peak RSS MiB ours': peak(name).toFixed(0),
    });
  }
}
process.stdout.write(`\nimage pull benchmark: ${RUNS} runs, medians (wall seconds), load average now ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
console.table(rows);
process.stdout.write(`image-puller library shared-tag (pull() in a running process, as the agent calls it): ${med('image-puller library shared-tag').toFixed(3)} s median\n`);
process.stdout.write(`goals: cold rootfs <= 0.6x the faster peer; shared-layer tag < 0.25 s; peak RSS < 150 MiB\n`);
process.stdout.write(`cpu = user+system seconds of the command (for ctr, plus the containerd daemon's); wall times depend on machine load\n`);
process.stdout.write(`${JSON.stringify({ medians: Object.fromEntries(Object.keys(results).map((k) => [k, { wall: med(k), cpu: med(k, 'cpu'), peakRssMiB: peak(k) }])) })}\n`);
