// The kubelet's standard mounts through crictl (v1.34.0) against the real cello-cri CLI, a real
// controller with the local provider (real cell-agent, real runc) and a real registry. The pods
// directory is laid out as a kubelet lays it out (etc-hosts, containers/<name>/<id>, volumes with
// the atomic writer's ..data links); its volume files reach the cell, a rotated token reaches it
// too, an emptyDir is the cell's, the termination message comes back to the kubelet's file; and
// the attacker: a mount outside the pods directory, another pod's files, a symlink planted in the
// pods directory or in a volume, each refused naming the mount, before anything is created.
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { criTools, pushBusybox, pushPause, startRegistry, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crictlFor, startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let busybox: string;
let podsRoot: string;

const {
  run: crictl,
  ok,
  file,
} = crictlFor(
  () => tools.crictl,
  () => shim,
);

const podConfig = (name: string) => ({
  metadata: { name, namespace: 'default', uid: `uid-${name}`, attempt: 0 },
  hostname: name,
  log_directory: join(shim.dir, 'pods', `default_${name}`),
  linux: {},
});

/** A volume as the kubelet's atomic writer leaves it: the files in a timestamped directory, `..data` linking to it, each name linking through `..data`. */
function atomicVolume(dir: string, files: Record<string, string>, generation: number): void {
  mkdirSync(dir, { recursive: true });
  const ts = `..2026_12_07_00_00_0${generation}.000000000`;
  mkdirSync(join(dir, ts));
  for (const [name, body] of Object.entries(files)) writeFileSync(join(dir, ts, name), body, { mode: 0o644 });
  // The swap is one rename, as the kubelet does it.
  symlinkSync(ts, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  for (const name of Object.keys(files)) {
    try {
      symlinkSync(join('..data', name), join(dir, name));
    } catch {
      // already linked through ..data
    }
  }
}

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  controller = await startController({ insecureRegistries: [registry.host] });
  podsRoot = mkdtempSync(join(tmpdir(), 'cello-kubelet-pods-'));
  shim = await startShim([
    '--insecure-registry',
    registry.host,
    '--controller-config',
    controller.cellctlConfig,
    '--sandbox-image',
    pause,
    '--kubelet-pods-dir',
    podsRoot,
    '--volume-sync-seconds',
    '1',
  ]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
  if (podsRoot) rmSync(podsRoot, { recursive: true, force: true });
}, 120_000);

describe("the kubelet's standard mounts reach the pod's cell", () => {
  it('etc-hosts, termination-log, a projected token (rotated), a configMap and an emptyDir', async () => {
    const pod = join(podsRoot, 'uid-vols');
    mkdirSync(pod, { recursive: true });
    // As the kubelet writes it for a pod with hostAliases (and a line that is not an alias, ignored).
    writeFileSync(join(pod, 'etc-hosts'), '# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.example\tbar\nnot-an-ip\tx\n');
    mkdirSync(join(pod, 'containers', 'app'), { recursive: true });
    mkdirSync(join(pod, 'containers', 'job'), { recursive: true });
    writeFileSync(join(pod, 'containers', 'app', 'a1b2c3'), '');
    writeFileSync(join(pod, 'containers', 'job', 'd4e5f6'), '');
    const token = join(pod, 'volumes', 'kubernetes.io~projected', 'kube-api-access-abcde');
    atomicVolume(token, { token: 'token-1', 'ca.crt': 'the cluster CA', namespace: 'default' }, 1);
    atomicVolume(join(pod, 'volumes', 'kubernetes.io~configmap', 'cfg'), { 'app.conf': 'level=debug\n' }, 1);
    mkdirSync(join(pod, 'volumes', 'kubernetes.io~empty-dir', 'scratch'), { recursive: true });

    const sandbox = await ok(['--timeout', '120s', 'runp', file('vols.json', podConfig('vols'))]);
    const mounts = (ctr: string, id: string) => [
      { container_path: '/etc/hosts', host_path: join(pod, 'etc-hosts') },
      { container_path: '/dev/termination-log', host_path: join(pod, 'containers', ctr, id) },
      { container_path: '/var/run/secrets/kubernetes.io/serviceaccount', host_path: token, readonly: true },
      { container_path: '/etc/cfg', host_path: join(pod, 'volumes', 'kubernetes.io~configmap', 'cfg'), readonly: true },
      { container_path: '/scratch', host_path: join(pod, 'volumes', 'kubernetes.io~empty-dir', 'scratch') },
    ];
    const ctr = await ok([
      '--timeout',
      '60s',
      'create',
      '--no-pull',
      sandbox,
      file('app.json', { metadata: { name: 'app', attempt: 0 }, image: { image: busybox }, command: ['sleep', '3600'], mounts: mounts('app', 'a1b2c3'), linux: {} }),
      file('vols.json', podConfig('vols')),
    ]);
    await ok(['--timeout', '60s', 'start', ctr]);
    const sa = '/var/run/secrets/kubernetes.io/serviceaccount';
    expect(await ok(['exec', '-s', ctr, 'cat', `${sa}/token`])).toBe('token-1');
    expect(await ok(['exec', '-s', ctr, 'cat', `${sa}/ca.crt`])).toBe('the cluster CA');
    expect(await ok(['exec', '-s', ctr, 'cat', `${sa}/namespace`])).toBe('default');
    expect(await ok(['exec', '-s', ctr, 'cat', '/etc/cfg/app.conf'])).toBe('level=debug');
    // Read-only, as the kubelet mounts these volumes.
    expect((await crictl(['exec', '-s', ctr, 'sh', '-c', `echo x > ${sa}/token`])).code).not.toBe(0);
    // The emptyDir is the cell's: writable.
    expect(await ok(['exec', '-s', ctr, 'sh', '-c', 'echo kept > /scratch/f && cat /scratch/f'])).toBe('kept');
    // /etc/hosts is the cell's own: the pod's hostname at its IP, and the pod's hostAliases read
    // back from the kubelet's file.
    const ip = (JSON.parse(await ok(['inspectp', sandbox])) as { status: { network: { ip: string } } }).status.network.ip;
    const hosts = await ok(['exec', '-s', ctr, 'cat', '/etc/hosts']);
    expect(hosts).toMatch(new RegExp(`^${ip.replace(/\./g, '\\.')}\\s.*\\bvols\\b`, 'm'));
    expect(hosts).toMatch(/^# Entries added by HostAliases\.\n10\.1\.2\.3\tfoo\.example\tbar$/m);
    expect(hosts).not.toContain('not-an-ip');

    // The kubelet rotates the token: the cell sees the new one, in the same running container.
    atomicVolume(token, { token: 'token-2', 'ca.crt': 'the cluster CA', namespace: 'default' }, 2);
    await waitFor('the rotated token on the cell', async () => (await crictl(['exec', '-s', ctr, 'cat', `${sa}/token`])).stdout.trim() === 'token-2', {
      timeoutMs: 60_000,
      intervalMs: 500,
    }).catch((err: unknown) => {
      throw new Error(`${String(err)}\n--- shim:\n${shim.logs().slice(-4000)}\n--- controller:\n${controller.logs().slice(-6000)}`);
    });
    expect((JSON.parse(await ok(['inspect', ctr])) as { status: { state: string } }).status.state).toBe('CONTAINER_RUNNING');
    expect(await ok(['exec', '-s', ctr, 'cat', '/scratch/f'])).toBe('kept');

    // A container that ends: its termination message lands in the kubelet's file, where the
    // kubelet reads it (the status lists the mount), and the emptyDir is shared with it.
    const job = await ok([
      'create',
      '--no-pull',
      sandbox,
      file('job.json', {
        metadata: { name: 'job', attempt: 0 },
        image: { image: busybox },
        command: ['sh', '-c', 'cat /scratch/f > /dev/termination-log; exit 3'],
        mounts: mounts('job', 'd4e5f6'),
        linux: {},
      }),
      file('vols.json', podConfig('vols')),
    ]);
    await ok(['--timeout', '60s', 'start', job]);
    const st = await waitFor(
      'the job exited',
      async () => {
        const s = JSON.parse(await ok(['inspect', job])) as { status: { state: string; exitCode: number; message: string; mounts: { containerPath: string; hostPath: string }[] } };
        return s.status.state === 'CONTAINER_EXITED' ? s.status : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect(st.exitCode).toBe(3);
    expect(st.message).toBe('');
    const tl = st.mounts.find((m) => m.containerPath === '/dev/termination-log');
    expect(tl?.hostPath).toBe(join(pod, 'containers', 'job', 'd4e5f6'));
    expect(readFileSync(join(pod, 'containers', 'job', 'd4e5f6'), 'utf8')).toBe('kept\n');

    await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
  }, 600_000);
});

describe('the attacker: any other host file is refused, naming the mount', () => {
  it('a path outside the pods directory, another pod, a planted symlink, a symlink in a volume, ..', async () => {
    const pod = join(podsRoot, 'uid-evil');
    mkdirSync(join(pod, 'volumes', 'kubernetes.io~configmap'), { recursive: true });
    symlinkSync('/etc', join(pod, 'volumes', 'kubernetes.io~configmap', 'planted'));
    mkdirSync(join(pod, 'volumes', 'kubernetes.io~secret', 'leaky'), { recursive: true });
    writeFileSync(join(pod, 'volumes', 'kubernetes.io~secret', 'leaky', 'ok'), 'fine');
    symlinkSync('/etc/passwd', join(pod, 'volumes', 'kubernetes.io~secret', 'leaky', 'passwd'));
    mkdirSync(join(podsRoot, 'uid-victim', 'volumes', 'kubernetes.io~secret', 'creds'), { recursive: true });
    writeFileSync(join(podsRoot, 'uid-victim', 'volumes', 'kubernetes.io~secret', 'creds', 'password'), 'the victim');
    mkdirSync(join(pod, 'plugins'), { recursive: true });

    const sandbox = await ok(['--timeout', '120s', 'runp', file('evil.json', podConfig('evil'))]);
    try {
      const attempt = async (hostPath: string, extra: Record<string, unknown> = {}) => {
        const r = await crictl([
          'create',
          '--no-pull',
          sandbox,
          file('evil-c.json', {
            metadata: { name: 'c', attempt: 0 },
            image: { image: busybox },
            command: ['sleep', '60'],
            mounts: [{ container_path: '/data', host_path: hostPath, readonly: true, ...extra }],
            linux: {},
          }),
          file('evil.json', podConfig('evil')),
        ]);
        expect(r.code, r.stdout).not.toBe(0);
        expect(r.stderr).toContain('config.mounts[0]');
        return r.stderr;
      };
      expect(await attempt('/etc')).toContain("cannot see this node's files");
      expect(await attempt('/var/lib/data')).toContain("cannot see this node's files");
      expect(await attempt(join(podsRoot, 'uid-victim', 'volumes', 'kubernetes.io~secret', 'creds'))).toContain("cannot see this node's files");
      expect(await attempt(`${pod}/../uid-victim/volumes/kubernetes.io~secret/creds`)).toContain("cannot see this node's files");
      expect(await attempt(join(pod, 'volumes', 'kubernetes.io~configmap', 'planted'))).toMatch(/resolves to .{0,2}"\/etc.{0,2}", outside this pod's kubelet directory/);
      expect(await attempt(join(pod, 'volumes', 'kubernetes.io~secret', 'leaky'))).toMatch(/leads to .{0,2}"\/etc\/passwd.{0,2}", outside the volume/);
      expect(await attempt(join(pod, 'plugins'))).toContain("not one of the kubelet's etc-hosts, termination-log or volume paths");
      expect(await attempt(join(pod, 'volumes', 'kubernetes.io~configmap', 'missing'))).toContain('cannot be read: ENOENT');
      expect(await attempt(join(pod, 'volumes', 'kubernetes.io~secret', 'leaky'), { propagation: 2 })).toContain('config.mounts[0].propagation');
      // Nothing was created for any of them.
      expect(await ok(['ps', '-a', '-q', '--pod', sandbox])).toBe('');
    } finally {
      await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
    }
  }, 300_000);
});
