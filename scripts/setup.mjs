#!/usr/bin/env node
// Installs what the project needs on a fresh machine, and nothing that is already there:
//   - npm packages (`npm ci`) when node_modules is missing or older than package-lock.json;
//   - Debian packages the tests and `npm start` use, when running as root (apt-get);
//   - moto's EC2 server from PyPI (pip), for the AWS provider's tests;
//   - kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, CoreDNS and
//     metrics-server built from the Go module proxy (scripts/k8s/*.sh; needs Go >= 1.21).
// Not root, or not Debian: prints the exact command to run instead, and fails.
// Plain Node with no dependencies, because it runs before node_modules exists.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// Each command the tests run, and the Debian package that provides it.
export const SYSTEM_PACKAGES = [
  ['docker-registry', 'docker-registry'],
  ['skopeo', 'skopeo'],
  ['umoci', 'umoci'],
  ['busybox', 'busybox-static'],
  ['runc', 'runc'],
  ['etcd', 'etcd-server'],
  ['etcdctl', 'etcd-client'],
  ['containerd', 'containerd'],
  // containerd's CRI plugin needs a CNI network before it reports NetworkReady to a kubelet
  // (testkit's startContainerd: bridge + host-local + loopback from /usr/lib/cni).
  ['/usr/lib/cni/bridge', 'containernetworking-plugins'],
  ['ip', 'iproute2'],
  ['nft', 'nftables'],
  ['iptables', 'iptables'],
  ['debootstrap', 'debootstrap'],
  ['zstd', 'zstd'],
  ['setfattr', 'attr'],
  ['pigz', 'pigz'],
  ['tar', 'tar'],
  ['openssl', 'openssl'],
  // node-pty builds from source; the cell-agent's seccomp test builds a static probe with gcc
  // (g++ depends on gcc and, through libstdc++-dev, on libc6-dev's libc.a).
  ['g++', 'g++'],
  ['pip3', 'python3-pip'],
  // Cell images (packages/images-test): the installer's lint, the disk image and the boot test.
  ['shellcheck', 'shellcheck'],
  ['mkfs.ext4', 'e2fsprogs'],
  // The store backup's test on a filesystem without hard links: rclone's FUSE mount (fuse3).
  ['rclone', 'rclone'],
  ['fusermount3', 'fuse3'],
  ['unshare', 'util-linux'],
  // cello-cri's node unit is checked with systemd-analyze verify (packages/cri/test/cli.test.ts).
  ['systemd-analyze', 'systemd'],
  // The CRI shim's tests: flock serializes the cri-tools build, setpriv runs crictl as another user.
  ['flock', 'util-linux'],
  ['setpriv', 'util-linux'],
  ['qemu-system-x86_64', 'qemu-system-x86'],
  // The conformance images (scripts/k8s/build-e2e-images.sh): busybox is built from source (make,
  // bzip2), and agnhost / jessie-dnsutils carry these tools with their libraries, as upstream's do.
  ['make', 'make'],
  ['bzip2', 'bzip2'],
  ['curl', 'curl'],
  ['dig', 'bind9-dnsutils'],
  ['nc.openbsd', 'netcat-openbsd'],
  ['iperf', 'iperf'],
];

const PIP_PACKAGES = [['moto_server', 'moto[server]']];

function log(msg) {
  process.stderr.write(`[setup] ${msg}\n`);
}

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Runs `fn` between "=== name" and "=== name: N s" lines: the stage times CI logs show. */
export function step(name, fn) {
  const t = Date.now();
  process.stderr.write(`\n=== ${name}\n`);
  fn();
  process.stderr.write(`=== ${name}: ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
}

function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function run(cmd, args, opts = {}) {
  log(`$ ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
}

function lockHash() {
  const lock = join(root, 'package-lock.json');
  const pkgs = [join(root, 'package.json'), lock];
  const h = createHash('sha256');
  for (const p of pkgs) if (existsSync(p)) h.update(readFileSync(p));
  return h.digest('hex');
}

export function ensureNpm() {
  const stamp = join(root, 'node_modules', '.cello-install-stamp');
  const want = lockHash();
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  // `npm install`, not `npm ci`: npm 11 leaves some other-platform optional packages (turbo's
  // darwin/windows binaries) out of the lock file and then `npm ci` refuses it as out of sync.
  // With the lock present, install resolves exactly what it records.
  run('npm', ['install', '--no-audit', '--no-fund']);
  mkdirSync(join(root, 'node_modules'), { recursive: true });
  writeFileSync(stamp, want);
}

export function ensureSystem() {
  const missing = SYSTEM_PACKAGES.filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg);
  const pipMissing = PIP_PACKAGES.filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg);
  if (missing.length === 0 && pipMissing.length === 0) return;
  const aptLine = `apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  const pipLine = `pip3 install ${pipMissing.map((p) => `'${p}'`).join(' ')}`;
  const debian = existsSync('/etc/debian_version');
  if (!isRoot() || !debian) {
    const lines = [missing.length ? aptLine : '', pipMissing.length ? pipLine : ''].filter(Boolean);
    throw new Error(`missing system packages; run as root:\n  ${lines.join('\n  ')}\n` + (debian ? '' : '(this is not Debian/Ubuntu: install the equivalent packages)'));
  }
  if (missing.length) {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    run('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update', '-q'], { env });
    run('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'install', '-y', '-q', '--no-install-recommends', ...missing], { env });
    // The Debian packages start their daemons; tests start their own on loopback ports.
    for (const svc of ['docker-registry', 'etcd', 'containerd']) {
      spawnSync('systemctl', ['disable', '--now', svc], { stdio: 'ignore' });
    }
  }
  for (const pkg of pipMissing) {
    const pip = has('pip3') ? 'pip3' : 'pip';
    const args = ['install', '-q', '--disable-pip-version-check', pkg];
    try {
      run(pip, args);
    } catch {
      // Debian's own Python refuses global installs (PEP 668); these tools are test-only.
      run(pip, [...args, '--break-system-packages']);
    }
  }
  const still = SYSTEM_PACKAGES.filter(([cmd]) => !has(cmd)).map(([c]) => c);
  if (still.length) throw new Error(`still missing after install: ${still.join(' ')}`);
}

// The Kubernetes control plane and add-ons the tests run for real, built from the Go module proxy
// and cached under /var/cache/cello (a cold build takes minutes; afterwards each is a no-op). Each
// script fails with the exact install line when Go or another tool is missing.
// build-e2e.sh and build-e2e-images.sh: the conformance subset test (controller) and `npm run conformance`.
const K8S_BUILDS = [
  'scripts/k8s/build.sh',
  'scripts/k8s/build-coredns.sh',
  'scripts/k8s/build-apiclient.sh',
  'scripts/k8s/build-metrics-server.sh',
  'scripts/k8s/build-cri-tools.sh',
  // busybox 1.37 from source and real nginx from Debian's package: critest's images (packages/cri)
  // and the conformance images both start from them.
  'scripts/k8s/build-busybox.sh',
  'scripts/k8s/build-nginx.sh',
  'scripts/k8s/build-e2e.sh',
  'scripts/k8s/build-e2e-images.sh',
];

export function ensureKubernetes() {
  for (const script of K8S_BUILDS) {
    const t = Date.now();
    const r = spawnSync('bash', [join(root, script)], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${script} failed (exit ${r.status}); see its output above`);
    const took = Date.now() - t;
    if (took > 5000) log(`${script}: built in ${(took / 1000).toFixed(0)} s -> ${r.stdout.trim()}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    ensureNpm();
    if (!process.argv.includes('--npm-only')) {
      ensureSystem();
      ensureKubernetes();
    }
  } catch (err) {
    log(err.message);
    process.exit(1);
  }
}
