// Debian's containerd (1.6) with its CRI plugin, for a real kubelet in tests: its own root, state,
// socket, runc root and CNI configuration under one temporary directory; the test registries
// reached over plain HTTP through containerd's hosts.toml (registry.config_path).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { requireCommand } from './registry.js';
import { waitFor } from './wait.js';

export interface StartContainerdOptions {
  /** The pod sandbox image (containerd's sandbox_image): pulled from one of the registries below. */
  sandboxImage: string;
  /** HOST:PORT registries reached over plain HTTP. */
  insecureRegistries?: string[];
  /** How long to wait for the socket to answer (default 60 s). */
  timeoutMs?: number;
}

export interface Containerd {
  /** The CRI socket (give it to startKubelet as runtimeEndpoint). */
  socket: string;
  dir: string;
  /** The CNI bridge pods without hostNetwork get an address on. */
  bridge: string;
  /** Runs `ctr` against this containerd (namespace k8s.io, the CRI's). */
  ctr(args: string[]): { code: number; stdout: string; stderr: string };
  logs(): string;
  /** Kills every container it still runs, stops containerd, removes its bridge, mounts and directory. */
  stop(): Promise<void>;
}

function mountsUnder(root: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && m.startsWith(root + '/'))
    .map((m) => m.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
}

/**
 * Starts containerd as root with the CRI plugin (runc v2 shim, cgroupfs, overlayfs), a CNI
 * bridge network of its own (Debian's containernetworking-plugins in /usr/lib/cni, host-local
 * addresses in a random 10.250.X.0/24) so that its runtime reports NetworkReady, and the
 * streaming server on loopback. Waits (with a deadline) until `ctr version` answers.
 */
export async function startContainerd(o: StartContainerdOptions): Promise<Containerd> {
  requireCommand('containerd', 'containerd');
  requireCommand('ctr', 'containerd');
  const dir = await mkdtemp(join(tmpdir(), 'cello-containerd-'));
  const socket = join(dir, 'containerd.sock');
  const suffix = randomBytes(3).toString('hex');
  const bridge = `cnitest${suffix}`;
  const subnet = `10.250.${randomBytes(1)[0]!}.0/24`;
  const cniConf = join(dir, 'cni');
  const certsD = join(dir, 'certs.d');
  await mkdir(cniConf, { recursive: true });
  for (const r of o.insecureRegistries ?? []) {
    await mkdir(join(certsD, r), { recursive: true });
    await writeFile(join(certsD, r, 'hosts.toml'), `server = "http://${r}"\n\n[host."http://${r}"]\n  capabilities = ["pull", "resolve"]\n`);
  }
  await writeFile(
    join(cniConf, '10-cello-test.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: `cello-test-${suffix}`,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: true,
          ipMasq: false,
          ipam: { type: 'host-local', ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: join(dir, 'ipam') },
        },
      ],
    }),
  );
  const q = JSON.stringify;
  const config = `version = 2
root = ${q(join(dir, 'root'))}
state = ${q(join(dir, 'state'))}
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = ${q(socket)}

[ttrpc]
  address = ${q(`${socket}.ttrpc`)}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(o.sandboxImage)}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Sandboxes ask for oom_score_adj -998, which this host (itself a container) refuses to lower:
  # runc's init dies ("can't get final child's PID from pipe"). Keep it at containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = ${q(join(dir, 'runc'))}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = ${q(cniConf)}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ${q(certsD)}
`;
  const configFile = join(dir, 'config.toml');
  await writeFile(configFile, config);
  let log = '';
  let exited = false;
  const child: ChildProcess = spawn('containerd', ['--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  const onData = (b: Buffer) => (log = (log + b.toString()).slice(-64_000));
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const ctr = (args: string[]) => {
    const r = spawnSync('ctr', ['-a', socket, '-n', 'k8s.io', ...args], { encoding: 'utf8', timeout: 60_000 });
    return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!exited) {
      // The shims outlive containerd: end every task while it still answers.
      for (const id of ctr(['tasks', 'ls', '-q']).stdout.split('\n').filter(Boolean)) {
        ctr(['tasks', 'kill', '-a', '-s', 'SIGKILL', id]);
        ctr(['tasks', 'rm', '-f', id]);
      }
      for (const id of ctr(['containers', 'ls', '-q']).stdout.split('\n').filter(Boolean)) ctr(['containers', 'rm', id]);
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(t);
    }
    spawnSync('ip', ['link', 'del', bridge]);
    for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m]);
    // Sandboxes' network namespaces live in /run/netns (cni-*); the CRI removed those of stopped pods.
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      'containerd to answer on its socket',
      () => {
        if (exited) throw new Error(`containerd exited: ${log.slice(-3000)}`);
        return ctr(['version']).code === 0;
      },
      { timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 200 },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { socket, dir, bridge, ctr, logs: () => log, stop };
}
