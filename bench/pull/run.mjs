#!/usr/bin/env node
// `npm run bench:pull`: pulls the 5-layer Debian fixture (about 100 MB gzip) from a local
// docker-registry, cold, warm and as a tag sharing 4 of its 5 layers, with
//   - image-puller (this repo): --rootfs (flattened) and --layers (overlay lower dirs),
//   - skopeo copy + umoci unpack,
//   - containerd's ctr image pull (overlayfs snapshotter),
//   - crane export | tar -x (go-containerregistry, built by build-crane.sh),
// all in the same run, interleaved, and prints medians, ratios and peak RSS.
// Then the same image over HTTPS (a registry with a certificate from a private CA, each tool told
// to trust it: image-puller --registry-config, skopeo --src-cert-dir, ctr --hosts-dir with a
// hosts.toml, crane through SSL_CERT_FILE), cold, against a floor (`zcat layer | tar -x` of the
// same bytes), and image-puller's stages (TLS+fetch, inflate, tar parse, file creation) each
// against the same stage done by curl, zcat and tar (stages.mjs).
// image-puller's cold runs also print its main thread's CPU apart (thread-cpu.mjs): Node does the
// fetch, hashing, tar parsing and file creation there, so it bounds the pull on two cores.
// Cold runs drop the page cache first. Env: BENCH_RUNS (default 3); BENCH_ONLY=http|https.
//
// Each contender writes to a fresh ext4 filesystem of its own in every run (a sparse file,
// loop-mounted; containerd is restarted with its root there), as a new cell's disk would be.
// Why: on a filesystem where many files were deleted in the last minutes, ext4 makes every new
// inode skip the recently deleted ones (ialloc.c recently_deleted), and creating a file cost
// 100-500 µs instead of ~15 µs here: whoever ran after a big `rm -rf` (the previous contender's
// trees) was timed on that, not on its own work.
import { spawnSync, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, readFileSync, copyFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const { startRegistry, pushLayoutTag, buildFixtures, requireCommand, waitExit, makeTestPki } = await import(join(repo, 'packages', 'testkit', 'dist', 'index.js'));
const CLI = join(repo, 'packages', 'image-puller', 'dist', 'image-puller.js'); // the bundled CLI, as installed
const THREAD_CPU = join(here, 'thread-cpu.mjs'); // per-thread CPU of image-puller runs (main thread vs the rest)
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const ONLY = process.env.BENCH_ONLY;
if (ONLY && !['http', 'https'].includes(ONLY)) throw new Error(`BENCH_ONLY: expected http or https, got ${ONLY}`);

for (const [c, p] of [
  ['skopeo', 'skopeo'],
  ['umoci', 'umoci'],
  ['containerd', 'containerd'],
  ['ctr', 'containerd'],
  ['/usr/bin/time', 'time'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['curl', 'curl'],
  ['openssl', 'openssl'],
])
  requireCommand(c, p);
const built = spawnSync(join(here, 'build-crane.sh'), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
if (built.status !== 0) throw new Error('bench/pull/build-crane.sh failed (it needs go and the Go module proxy)');
const CRANE = built.stdout.trim();
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
  const threads = /thread-cpu main=([\d.]+) other=([\d.]+)/.exec(r.stderr.toString());
  return { wall: e, cpu: u + s, rssMiB: m / 1024, ...(threads ? { mainCpu: Number(threads[1]), otherCpu: Number(threads[2]) } : {}) };
}

/** GNU time reports only the largest process of a pipeline; sh -c 'a && b' measures each step's peak. */
const sh = (...parts) => parts.join(' && ');

const fixtures = await buildFixtures('debian');
const registry = await startRegistry();
const ref = await pushLayoutTag(registry, fixtures.layout, 'bench-gzip', 'bench/debian:gzip');
const shared = await pushLayoutTag(registry, fixtures.layout, 'bench-shared', 'bench/debian:shared');
log(`registry ${registry.host}: ${ref}, ${shared}`);

// HTTPS: the same image in Docker schema2 form, behind a certificate from a private CA.
const pki = makeTestPki();
const tlsRegistry = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key } });
const tlsRef = await pushLayoutTag(tlsRegistry, fixtures.layout, 'bench-gzip', 'bench/debian:gzip', { format: 'v2s2' });
log(`https registry ${tlsRegistry.host}: ${tlsRef}`);
const trust = join(work, 'trust');
mkdirSync(join(trust, 'skopeo'), { recursive: true });
copyFileSync(pki.ca, join(trust, 'skopeo', 'ca.crt'));
mkdirSync(join(trust, 'containerd', tlsRegistry.host), { recursive: true });
writeFileSync(
  join(trust, 'containerd', tlsRegistry.host, 'hosts.toml'),
  `server = "https://${tlsRegistry.host}"\n\n[host."https://${tlsRegistry.host}"]\n  capabilities = ["pull", "resolve"]\n  ca = ${JSON.stringify(pki.ca)}\n`,
);
const registryConfig = join(trust, 'registries.yaml');
writeFileSync(registryConfig, `registries:\n  "${tlsRegistry.host}": {caFile: ${JSON.stringify(pki.ca)}}\n`);

/** A fresh, empty ext4 filesystem mounted at work/NAME (see the header for why). */
const mounts = new Set();
function freshFs(name) {
  const img = join(work, `${name}.img`);
  const dir = join(work, name);
  mkdirSync(dir);
  for (const [cmd, ...args] of [
    ['truncate', '-s', '16G', img],
    ['mkfs.ext4', '-q', '-F', img],
    ['mount', '-o', 'loop', img, dir],
  ]) {
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
  writeFileSync(
    join(dir, 'config.toml'),
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
      '[grpc]',
      `  address = "${sock}"`,
    ].join('\n'),
  );
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
  const threads = m.mainCpu === undefined ? '' : ` (main thread ${m.mainCpu.toFixed(2)}, other threads ${m.otherCpu.toFixed(2)})`;
  log(`${name}: ${m.wall.toFixed(2)} s wall, ${m.cpu.toFixed(2)} s cpu${threads}, ${m.rssMiB.toFixed(0)} MiB, load ${loadavg()[0].toFixed(1)}`);
}

/** Every contender must leave the same Debian tree behind: a wrong tree is no result. */
function checkRootfs(who, dir) {
  for (const f of ['usr/bin/bash', 'etc/debian_version', 'var/lib/dpkg/status']) {
    if (!existsSync(join(dir, f))) throw new Error(`${who}: ${f} missing from the unpacked tree in ${dir}`);
  }
}

const stageNames = ['TLS+fetch', 'inflate', 'tar parse', 'file creation'];

/** One cold HTTPS run of every contender, the floor, and image-puller's stages against theirs. */
async function httpsRun() {
  const ours = freshFs('https-ours');
  dropCaches();
  record(
    'https image-puller rootfs cold',
    measure(`node --import ${THREAD_CPU} ${CLI} pull ${tlsRef} --registry-config ${registryConfig} --cache ${ours}/cache --rootfs ${ours}/rootfs`),
  );
  checkRootfs('image-puller', `${ours}/rootfs`);
  dropFs(ours);

  const cr = freshFs('https-crane');
  dropCaches();
  record('https crane cold', measure(`SSL_CERT_FILE=${pki.ca} ${CRANE} export ${tlsRef} - | tar -x -C ${cr}`));
  checkRootfs('crane', cr);
  dropFs(cr);

  const su = freshFs('https-su');
  dropCaches();
  record(
    'https skopeo+umoci cold',
    measure(sh(`skopeo copy -q --src-cert-dir ${trust}/skopeo docker://${tlsRef} oci:${su}/oci:img`, `umoci unpack --image ${su}/oci:img ${su}/b >/dev/null`)),
  );
  checkRootfs('skopeo+umoci', `${su}/b/rootfs`);
  dropFs(su);

  const cd = freshFs('https-containerd');
  const { proc, ctr } = await startContainerd(cd);
  try {
    dropCaches();
    record(
      'https ctr cold',
      withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --hosts-dir ${trust}/containerd --snapshotter overlayfs ${tlsRef} >/dev/null`)),
    );
  } finally {
    proc.kill('SIGTERM');
    await waitExit(proc, { what: 'containerd' });
    dropFs(cd);
  }

  // image-puller's stages one at a time, then the same stages by curl, zcat and tar on the same blobs.
  const st = freshFs('https-stages');
  dropCaches();
  const r = spawnSync(process.execPath, [join(here, 'stages.mjs'), registryConfig, tlsRef, st], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`stages.mjs failed: ${r.stderr.slice(-2000)}`);
  const s = JSON.parse(r.stdout);
  checkRootfs('image-puller stages', `${st}/rootfs`);
  const blobs = s.blobs.join(' ');
  const untar = (to) => `mkdir -p ${to} && for b in ${blobs}; do zcat $b | tar -x --recursive-unlink -C ${to} || exit 1; done`;
  dropCaches();
  record('https floor zcat|tar -x cold', measure(untar(`${st}/floor-cold`)));
  const inflate = measure(`for b in ${blobs}; do zcat $b || exit 1; done >/dev/null`);
  const parse = measure(`for b in ${blobs}; do zcat $b | tar -t >/dev/null || exit 1; done`);
  const unpack = measure(untar(`${st}/floor-warm`));
  mkdirSync(`${st}/curl`);
  dropCaches();
  const urls = s.blobs.map((b, i) => `-o ${st}/curl/${i} https://${tlsRegistry.host}/v2/bench/debian/blobs/sha256:${b.split('/').pop()}`).join(' ');
  const fetch = measure(`curl -sS --fail --cacert ${pki.ca} --parallel --parallel-max 4 ${urls}`);
  // A stage alone is the difference of two runs (parse = inflate+parse minus inflate ...).
  const minus = (a, b) => (b ? { wall: a.wall - b.wall, cpu: a.cpu - b.cpu } : a);
  const stage = (name, ours, floor) => (results[`stage ${name}`] ??= []).push({ ours, floor });
  stage('TLS+fetch', s.fetch, fetch);
  stage('inflate', s.inflate, inflate);
  stage('tar parse', minus(s.parse, s.inflate), minus(parse, inflate));
  stage('file creation', minus(s.unpack, s.parse), minus(unpack, parse));
  const last = (n, k) => results[`stage ${n}`].at(-1)[k];
  log(
    `stages (load ${loadavg()[0].toFixed(1)}), cpu s (wall s), image-puller / floor: ${stageNames.map((n) => `${n} ${last(n, 'ours').cpu.toFixed(2)} (${last(n, 'ours').wall.toFixed(2)}) / ${last(n, 'floor').cpu.toFixed(2)} (${last(n, 'floor').wall.toFixed(2)})`).join(', ')}`,
  );
  dropFs(st);
}

try {
  for (let run = 0; run < RUNS; run++) {
    log(`run ${run + 1}/${RUNS} (load ${loadavg()[0].toFixed(1)})`);
    if (ONLY !== 'https') {
      // image-puller, flattened rootfs
      const ours = freshFs('ours');
      dropCaches();
      record('image-puller rootfs cold', measure(`node --import ${THREAD_CPU} ${CLI} pull ${ref} --plain-http --cache ${ours}/cache --rootfs ${ours}/rootfs1`));
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
      record(
        'skopeo+umoci shared-tag',
        measure(sh(`skopeo copy -q --src-tls-verify=false docker://${shared} oci:${su}/oci:shared`, `umoci unpack --image ${su}/oci:shared ${su}/b3 >/dev/null`)),
      );
      dropFs(su);

      // crane export | tar -x (crane flattens the layers, whiteouts applied, into one tar stream)
      const cr = freshFs('crane');
      dropCaches();
      record('crane cold', measure(`${CRANE} export --insecure ${ref} - | tar -x -C ${cr}`));
      checkRootfs('crane', cr);
      dropFs(cr);

      // containerd, started afresh on its own filesystem
      const cd = freshFs('containerd');
      const { proc, ctr } = await startContainerd(cd);
      try {
        dropCaches();
        record(
          'ctr cold',
          withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${ref} >/dev/null`)),
        );
        record(
          'ctr warm',
          withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${ref} >/dev/null`)),
        );
        record(
          'ctr shared-tag',
          withDaemonCpu(proc.pid, () => measure(`${ctr} image pull --plain-http --snapshotter overlayfs ${shared} >/dev/null`)),
        );
      } finally {
        proc.kill('SIGTERM');
        await waitExit(proc, { what: 'containerd' });
        dropFs(cd);
      }
    }
    if (ONLY !== 'http') await httpsRun();
  }
} finally {
  await registry.stop();
  await tlsRegistry.stop();
  rmSync(pki.dir, { recursive: true, force: true });
  for (const dir of [...mounts]) dropFs(dir);
  rmSync(work, { recursive: true, force: true });
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const med = (name, k = 'wall') => median(results[name].map((m) => m[k]));
const peak = (name) => Math.max(...results[name].map((m) => m.rssMiB));

// Like with like: a flattened rootfs (ours --rootfs, skopeo+umoci, crane) and per-layer snapshots
// (ours --layers, ctr's overlayfs snapshots); each ratio is against the faster peer of the run.
const load = loadavg()
  .map((l) => l.toFixed(1))
  .join(' ');
if (ONLY !== 'https') {
  const rows = [];
  for (const phase of ['cold', 'warm', 'shared-tag']) {
    const su = med(`skopeo+umoci ${phase}`);
    const c = med(`ctr ${phase}`);
    // crane has no cache: it is a peer of cold pulls only.
    const cr = phase === 'cold' ? med('crane cold') : Infinity;
    const faster = Math.min(su, c, cr);
    for (const mode of ['rootfs', 'layers']) {
      const name = `image-puller ${mode} ${phase}`;
      const o = med(name);
      rows.push({
        phase,
        'image-puller': `--${mode}`,
        'ours s': o.toFixed(2),
        'skopeo+umoci s': su.toFixed(2),
        'ctr s': c.toFixed(2),
        'crane s': Number.isFinite(cr) ? cr.toFixed(2) : '-',
        'ours/faster peer': (o / faster).toFixed(2),
        'ours/same-kind peer': (o / (mode === 'rootfs' ? su : c)).toFixed(2),
        'cpu s ours/su/ctr+daemon': `${med(name, 'cpu').toFixed(2)}/${med(`skopeo+umoci ${phase}`, 'cpu').toFixed(2)}/${med(`ctr ${phase}`, 'cpu').toFixed(2)}`,
        'peak RSS MiB ours': peak(name).toFixed(0),
      });
    }
  }
  process.stdout.write(`\nimage pull benchmark, plain HTTP: ${RUNS} runs, medians (wall seconds), load average now ${load}\n`);
  console.table(rows);
  process.stdout.write(`image-puller library shared-tag (pull() in a running process, as the agent calls it): ${med('image-puller library shared-tag').toFixed(3)} s median\n`);
}
if (ONLY !== 'http') {
  const ours = med('https image-puller rootfs cold');
  const floor = med('https floor zcat|tar -x cold');
  const rows = ['https image-puller rootfs cold', 'https crane cold', 'https ctr cold', 'https skopeo+umoci cold', 'https floor zcat|tar -x cold'].map((name) => ({
    contender: name.replace(/^https | cold$/g, ''),
    'wall s': med(name).toFixed(2),
    'cpu s': med(name, 'cpu').toFixed(2),
    'main thread cpu s': name.includes('image-puller') ? med(name, 'mainCpu').toFixed(2) : '-',
    'peak RSS MiB': peak(name).toFixed(0),
    'image-puller / this': (ours / med(name)).toFixed(2),
  }));
  process.stdout.write(`\nimage pull benchmark, HTTPS (private CA), cold to a rootfs, fresh ext4 each: ${RUNS} runs, medians, load average now ${load}\n`);
  console.table(rows);
  const stageRows = stageNames.map((n) => {
    const m = (who, k) => median(results[`stage ${n}`].map((x) => x[who][k]));
    return {
      stage: n,
      'image-puller cpu s': m('ours', 'cpu').toFixed(2),
      'floor cpu s': m('floor', 'cpu').toFixed(2),
      'cpu gap s': (m('ours', 'cpu') - m('floor', 'cpu')).toFixed(2),
      'image-puller wall s': m('ours', 'wall').toFixed(2),
      'floor wall s': m('floor', 'wall').toFixed(2),
    };
  });
  process.stdout.write(
    'image-puller stages, one at a time (the pull overlaps them), against the floor: curl --parallel-max 4 (TLS+fetch), zcat (inflate), zcat|tar -t (parse), zcat|tar -x (creation);\nCPU seconds (user+system) are steady under load, wall seconds are not\n',
  );
  console.table(stageRows);
  const peers = ['crane', 'ctr', 'skopeo+umoci'].map((p) => [p, med(`https ${p} cold`)]).sort((a, b) => a[1] - b[1]);
  process.stdout.write(
    `HTTPS cold: image-puller ${ours.toFixed(2)} s, fastest peer ${peers[0][0]} ${peers[0][1].toFixed(2)} s (ratio ${(ours / peers[0][1]).toFixed(2)}), floor ${floor.toFixed(2)} s\n`,
  );
}
process.stdout.write(`goals: cold rootfs <= 0.6x the faster peer (over HTTPS too); shared-layer tag < 0.25 s; peak RSS < 150 MiB\n`);
process.stdout.write(`cpu = user+system seconds of the command (for ctr, plus the containerd daemon's); wall times depend on machine load\n`);
process.stdout.write(
  `${JSON.stringify({
    load,
    medians: Object.fromEntries(
      Object.keys(results)
        .filter((k) => !k.startsWith('stage '))
        .map((k) => [k, { wall: med(k), cpu: med(k, 'cpu'), peakRssMiB: peak(k) }]),
    ),
  })}\n`,
);
