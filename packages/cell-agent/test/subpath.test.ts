// subPath without a check-then-use race (CVE-2017-1002101 / CVE-2021-25741 class), with real
// mounts and real runc: a component swapped for a symlink to "/" after the subPath was
// resolved is refused; a swap after staging changes nothing the unit sees; a unit given a
// symlink to "/" by another unit sees its volume, not the host; staged mounts go with the pod.
import { readFileSync, mkdirSync, mkdtempSync, readdirSync, renameSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pod, PodPhase, RestartPolicy } from '@cello/proto/cell';
import { mountSubPath } from '../src/pod/volumes.js';
import { bindMount, buildSpec, type OciMount } from '../src/runtime/oci-spec.js';
import { removeStagedSubPaths } from '../src/runtime/subpath-mount.js';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { makeBusyboxRootfs, requireTools } from './helpers/rootfs.js';

const mounted = (dir: string) =>
  readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => (l.split(' ')[4] ?? '').startsWith(dir));

function volume(): { vol: string; staging: string } {
  const base = mkdtempSync(join(tmpdir(), 'cello-subpath-'));
  const vol = join(base, 'vol');
  mkdirSync(join(vol, 'data/dir'), { recursive: true });
  writeFileSync(join(vol, 'data/dir/marker'), 'inside the volume');
  writeFileSync(join(vol, 'data/file'), 'a file');
  return { vol, staging: join(base, 'staging') };
}

/** Runs `script` in a real runc container of busybox with these mounts; returns its stdout. */
function runInContainer(mounts: OciMount[], script: string): string {
  requireTools();
  const base = mkdtempSync(join(tmpdir(), 'cello-subpath-runc-'));
  const rootfs = makeBusyboxRootfs(join(base, 'rootfs'));
  const id = `subpath-${process.pid}-${Date.now()}`;
  const spec = buildSpec({
    rootfs,
    readOnlyRoot: true,
    argv: ['sh', '-c', script],
    env: ['PATH=/bin'],
    cwd: '/',
    user: { uid: 0, gid: 0, additionalGids: [], home: '/' },
    tty: false,
    hostname: 'subpath',
    capabilities: [],
    noNewPrivileges: true,
    seccomp: undefined,
    privileged: false,
    mounts,
    cgroupsPath: `/cello-test/${id}`,
    netnsPath: undefined,
    sysctls: {},
    shmBytes: 1 << 20,
  });
  writeFileSync(join(base, 'config.json'), JSON.stringify(spec));
  try {
    return execFileSync('runc', ['--root', join(base, 'runc'), 'run', '--bundle', base, id], { encoding: 'utf8', timeout: 20_000, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } finally {
    execFileSync('runc', ['--root', join(base, 'runc'), 'delete', '--force', id], { stdio: 'ignore' });
  }
}

describe('staged subPath mounts', () => {
  const stagings: string[] = [];
  afterAll(async () => {
    for (const s of stagings) await removeStagedSubPaths(s, 'unit');
  });

  it('refuses a component swapped for a symlink to / between resolving and opening', async () => {
    const { vol, staging } = volume();
    stagings.push(staging);
    const swap = () => {
      renameSync(join(vol, 'data'), join(vol, 'data.honest'));
      symlinkSync('/', join(vol, 'data'));
    };
    await expect(mountSubPath(vol, 'data/dir', join(staging, '0'), swap)).rejects.toThrow(/subPath "data\/dir": "data" is a symlink/);
    expect(mounted(staging)).toBe(false);
  });

  it('mounts what was opened: a swap after staging does not reach the staged path', async () => {
    const { vol, staging } = volume();
    stagings.push(staging);
    const dir = await mountSubPath(vol, 'data/dir', join(staging, '0'));
    const file = await mountSubPath(vol, 'data/file', join(staging, '1'));
    renameSync(join(vol, 'data'), join(vol, 'data.honest'));
    symlinkSync('/', join(vol, 'data'));
    // What runc will bind-mount: the original directory and file, not the host's /dir or /file.
    expect(readdirSync(dir)).toEqual(['marker']);
    expect(readFileSync(file, 'utf8')).toBe('a file');
    // And a real container given the staged paths sees them, not the host's root.
    expect(runInContainer([bindMount(dir, '/m', true), bindMount(file, '/f', true)], 'ls /m; cat /f')).toBe('marker\na file');
    await removeStagedSubPaths(staging, 'unit');
    expect(mounted(staging)).toBe(false);
    expect(existsSync(staging)).toBe(false);
    // Removing the staging never touched the volume's files.
    expect(readFileSync(join(vol, 'data.honest/dir/marker'), 'utf8')).toBe('inside the volume');
  });

  it('removes only what staging made: never a file with contents, never into a directory', async () => {
    const { staging } = volume();
    mkdirSync(join(staging, '0'), { recursive: true });
    writeFileSync(join(staging, '0', 'not-ours'), 'data');
    await expect(removeStagedSubPaths(staging, 'unit')).rejects.toThrow(/ENOTEMPTY/);
    expect(readFileSync(join(staging, '0', 'not-ours'), 'utf8')).toBe('data');
    const other = volume().staging;
    mkdirSync(other);
    writeFileSync(join(other, '1'), 'data');
    await expect(removeStagedSubPaths(other, 'unit')).rejects.toThrow(/is not an unused staging path/);
    expect(readFileSync(join(other, '1'), 'utf8')).toBe('data');
  });

  it('creates a missing subPath as a directory, and refuses a file in the middle', async () => {
    const { vol, staging } = volume();
    stagings.push(staging);
    await mountSubPath(vol, 'new/deeper', join(staging, '0'));
    expect(existsSync(join(vol, 'new/deeper'))).toBe(true);
    await expect(mountSubPath(vol, 'data/file/x', join(staging, '1'))).rejects.toThrow(/"data\/file" is not a directory/);
  });
});

describe('subPath in pods', () => {
  let reg: TestImages;
  const agents: TestAgent[] = [];
  beforeAll(async () => {
    requireTools();
    reg = await startTestRegistry();
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await reg?.stop();
  });

  it('a symlink to / left in a shared volume by another unit leads to the volume, not the host; staged mounts go with the pod', async () => {
    const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host] });
    agents.push(a);
    const marker = `host-only-${process.pid}-${Date.now()}`;
    const hostDir = mkdtempSync(join(tmpdir(), 'cello-hostmark-'));
    writeFileSync(join(hostDir, marker), 'x');
    await apply(a.client, {
      pod: pod('subpath-escape', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        volumes: [{ name: 'shared', source: { $case: 'emptyDir', value: {} } }],
        initContainers: [
          {
            name: 'plant',
            image: reg.busybox,
            command: ['sh', '-c', `echo vol > /v/in-volume && ln -s / /v/root && ln -s ${hostDir} /v/host`],
            volumeMounts: [{ name: 'shared', mountPath: '/v' }],
          },
        ],
        containers: [
          {
            name: 'victim',
            image: reg.busybox,
            command: ['sleep', '3600'],
            volumeMounts: [
              { name: 'shared', mountPath: '/r', subPath: 'root' },
              { name: 'shared', mountPath: '/h', subPath: 'host' },
            ],
          },
        ],
      }),
    });
    await a.watch.until('victim running', (w) => w.running('victim'), 30_000);
    const staged = join(a.agent.runDir, 'subpaths');
    expect(mounted(staged)).toBe(true);
    const { execFileSync } = await import('node:child_process');
    const id = a.watch.unit('victim')!.containerId.replace('runc://', '');
    const seen = execFileSync('runc', ['--root', join(a.stateDir, 'runc'), 'exec', id, 'sh', '-c', 'ls /r; echo ---; ls /h'], { encoding: 'utf8' });
    expect(seen).toContain('in-volume');
    expect(seen).not.toContain('proc');
    expect(seen).not.toContain(marker);
    await new Promise<void>((r) => a.client.deletePod({ gracePeriodSeconds: 0 }, () => r()));
    expect(mounted(staged)).toBe(false);
  });

  it('keeps a unit whose subPathExpr expands to an absolute path waiting CreateContainerConfigError, and starts it once an update fixes the expansion', async () => {
    // A minute between attempts: the start after the update can only come from the update.
    const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], backoff: { baseMs: 60_000, maxMs: 300_000, resetAfterMs: 600_000 } });
    agents.push(a);
    const p = pod('subpath-expr', {
      volumes: [{ name: 'work', source: { $case: 'emptyDir', value: {} } }],
      containers: [
        {
          name: 'app',
          image: reg.busybox,
          command: ['sleep', '3600'],
          env: [
            { name: 'POD_NAME', value: 'foo' },
            { name: 'ANNOTATION', valueFrom: { source: { $case: 'fieldRef', value: { apiVersion: 'v1', fieldPath: "metadata.annotations['mysubpath']" } } } },
          ],
          volumeMounts: [{ name: 'work', mountPath: '/sub', subPathExpr: '$(ANNOTATION)/$(POD_NAME)' }],
        },
      ],
    });
    p.metadata!.annotations = { notmysubpath: 'mypath' };
    await apply(a.client, { pod: p, generation: 1 });
    const waitingReason = () => {
      const st = a.watch.unit('app')?.state?.state;
      return st?.$case === 'waiting' ? st.value.reason : st?.$case;
    };
    await a.watch.until('config error', () => waitingReason() === 'CreateContainerConfigError', 60_000);
    const st = a.watch.unit('app')!.state!.state!;
    expect(st.$case === 'waiting' ? st.value.message : st.$case).toMatch(/subPath "\/foo" must be relative/);
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_PENDING);

    const fixed = Pod.fromJSON(Pod.toJSON(p));
    fixed.metadata!.annotations = { ...p.metadata!.annotations, mysubpath: 'mypath' };
    await apply(a.client, { pod: fixed, generation: 2 });
    await a.watch.until('app running after the update', (w) => w.running('app'), 30_000);
    expect(a.watch.unit('app')!.restartCount).toBe(0);
    await new Promise<void>((r) => a.client.deletePod({ gracePeriodSeconds: 0 }, () => r()));
  });
});
