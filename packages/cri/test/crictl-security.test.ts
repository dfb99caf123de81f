// A container's security context through crictl (v1.34.0), the real cello-cri CLI, a real
// controller with the local provider (real cell-agent, real runc) and a real registry, read back
// from inside the container on its cell, as containerd applies it: seccomp unset is Unconfined,
// masked and read-only paths as the request gives them, supplementary groups and a user by name
// (resolved on the cell from the image's /etc/passwd), privileged containers in a privileged
// sandbox (privileged over their own cell). Bad input is refused naming the field.
import { readFileSync } from 'node:fs';
import { criTools, pushBusybox, pushPause, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crictlFor, startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let busybox: string;

const {
  run: crictl,
  ok,
  file,
} = crictlFor(
  () => tools.crictl,
  () => shim,
);

const podConfig = (name: string, privileged: boolean) => ({
  metadata: { name, namespace: 'default', uid: `uid-${name}`, attempt: 0 },
  hostname: name,
  labels: { app: name },
  linux: privileged ? { security_context: { privileged: true } } : {},
});

// The kubelet's lists for procMount Default (k8s.io/kubernetes pkg/securitycontext).
const KUBELET_MASKED = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];
const KUBELET_READONLY = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** How many of /proc/keys (masked by default) and /proc/sys (read-only by default) are mounted over. */
const PROC_MOUNTS = ['sh', '-c', 'grep -c -e " /proc/keys " -e " /proc/sys " /proc/mounts; true'];

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  controller = await startController({ insecureRegistries: [registry.host] });
  shim = await startShim(['--insecure-registry', registry.host, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
}, 120_000);

describe('a container security context, applied on its cell as containerd applies it', () => {
  it('seccomp, masked and read-only paths, supplementary groups, a user by name, privileged', async () => {
    const pod = file('pod.json', podConfig('secctx', true));
    const sandbox = await ok(['--timeout', '120s', 'runp', pod]);
    try {
      const start = async (name: string, securityContext: Record<string, unknown>): Promise<string> => {
        const id = await ok([
          '--timeout',
          '60s',
          'create',
          '--no-pull',
          sandbox,
          file(`${name}.json`, { metadata: { name, attempt: 0 }, image: { image: busybox }, command: ['sleep', '3600'], linux: { security_context: securityContext } }),
          pod,
        ]);
        await ok(['--timeout', '60s', 'start', id]);
        return id;
      };
      const exec = (id: string, cmd: string[]) => ok(['exec', '-s', id, ...cmd]);
      const seccompMode = async (id: string) => (await exec(id, ['grep', 'Seccomp:', '/proc/self/status'])).replace(/\s+/g, ' ');

      // Unset seccomp is Unconfined (the cell's own default, RuntimeDefault, is not applied); no lists: nothing masked.
      const plain = await start('plain', {});
      expect(await seccompMode(plain)).toBe('Seccomp: 0');
      expect(await exec(plain, PROC_MOUNTS)).toBe('0');
      // What the kubelet sends for a default pod: RuntimeDefault and its lists.
      const kubelet = await start('kubelet', { seccomp: { profile_type: 0 }, masked_paths: KUBELET_MASKED, readonly_paths: KUBELET_READONLY });
      expect(await seccompMode(kubelet)).toBe('Seccomp: 2');
      expect(await exec(kubelet, PROC_MOUNTS)).toBe('2');
      // The request's own lists, exactly.
      const lists = await start('lists', { masked_paths: ['/etc/hostname'], readonly_paths: ['/tmp'] });
      expect(await exec(lists, ['sh', '-c', 'echo "[$(cat /etc/hostname)]"'])).toBe('[]');
      const touch = await crictl(['exec', '-s', lists, 'touch', '/tmp/x']);
      expect(touch.code).not.toBe(0);
      expect(touch.stdout + touch.stderr).toContain('Read-only file system');
      // A user by name from the image's /etc/passwd, and the container's groups.
      const groups = await start('groups', { run_as_username: 'nobody', supplemental_groups: [1234, 5678] });
      expect(await exec(groups, ['id'])).toBe('uid=65534(nobody) gid=65534(nogroup) groups=1234,5678');
      // Privileged: over its own cell. The agent's bounding set (this test runs beside the agent,
      // with the same one), no seccomp even with a Localhost profile named (as containerd
      // ignores it), /proc whole even with the kubelet's lists.
      const priv = await start('priv', { privileged: true, seccomp: { profile_type: 2, localhost_ref: '/var/lib/kubelet/seccomp/block.json' }, masked_paths: KUBELET_MASKED });
      expect(await seccompMode(priv)).toBe('Seccomp: 0');
      expect(await exec(priv, PROC_MOUNTS)).toBe('0');
      const bounding = /CapBnd:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1];
      expect(await exec(priv, ['sh', '-c', 'grep CapEff: /proc/self/status'])).toMatch(new RegExp(`CapEff:\\s*${bounding}$`));

      // A user the image does not have: the start fails saying so, naming the field.
      const nouser = await ok([
        'create',
        '--no-pull',
        sandbox,
        file('nouser.json', {
          metadata: { name: 'nouser', attempt: 0 },
          image: { image: busybox },
          command: ['id'],
          linux: { security_context: { run_as_username: 'nosuchuser' } },
        }),
        pod,
      ]);
      const failed = await crictl(['--timeout', '60s', 'start', nouser]);
      expect(failed.code).not.toBe(0);
      expect(failed.stderr).toContain("run_as_username): unable to find user nosuchuser: no matching entries in the image's /etc/passwd");
    } finally {
      await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
    }
  }, 600_000);

  it('refuses, naming the field: a privileged container in a sandbox that is not, hostile names and paths', async () => {
    const pod = file('plain-pod.json', podConfig('notpriv', false));
    const sandbox = await ok(['--timeout', '120s', 'runp', pod]);
    try {
      for (const [name, sc, field] of [
        ['priv', { privileged: true }, 'config.linux.security_context.privileged: no privileged container allowed in sandbox'],
        ['user', { run_as_username: '../../etc/passwd' }, 'config.linux.security_context.run_as_username'],
        ['userc', { run_as_username: 'root:root' }, 'config.linux.security_context.run_as_username'],
        ['masked', { masked_paths: ['/proc/keys', 'etc/shadow'] }, 'config.linux.security_context.masked_paths[1]'],
        ['ro', { readonly_paths: ['/tmp/../..'] }, 'config.linux.security_context.readonly_paths[0]'],
      ] as const) {
        const r = await crictl([
          'create',
          '--no-pull',
          sandbox,
          file(`${name}.json`, { metadata: { name, attempt: 0 }, image: { image: busybox }, command: ['true'], linux: { security_context: sc } }),
          pod,
        ]);
        expect(r.code, name).not.toBe(0);
        expect(r.stderr).toContain(field);
      }
      expect(await ok(['ps', '-a', '-q', '--pod', sandbox])).toBe('');
    } finally {
      await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
    }
  }, 300_000);
});
