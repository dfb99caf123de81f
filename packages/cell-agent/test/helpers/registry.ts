// A real registry (CNCF distribution via @cello/testkit) holding busybox images built from the
// test rootfs: `busybox` (root), `busybox-app` (USER app, resolved from its /etc/passwd) and
// `busybox-usr2` (StopSignal SIGUSR2), and `busybox-hostile`, whose top layer makes /etc/passwd
// and /etc/group symlinks leading out of the rootfs (to the agent machine's own files).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushImage, startRegistry, type RegistryServer } from '@cello/testkit';
import { makeBusyboxRootfs } from './rootfs.js';

export interface TestImages {
  registry: RegistryServer;
  busybox: string;
  busyboxApp: string;
  /** busybox whose image config says StopSignal SIGUSR2. */
  busyboxUsr2: string;
  /** busybox with /etc/passwd -> ../../../../../../../../etc/passwd and /etc/group -> /../../../etc/group on top. */
  busyboxHostile: string;
  stop(): Promise<void>;
}

export async function startTestRegistry(): Promise<TestImages> {
  const registry = await startRegistry();
  const scratch = mkdtempSync(join(tmpdir(), 'cello-rootfs-'));
  const rootfs = makeBusyboxRootfs(join(scratch, 'rootfs'));
  const tar = execFileSync('tar', ['-C', rootfs, '--numeric-owner', '--sort=name', '-cf', '-', '.'], { maxBuffer: 64 << 20 });
  const hostile = join(scratch, 'hostile');
  mkdirSync(join(hostile, 'etc'), { recursive: true });
  symlinkSync('../../../../../../../../etc/passwd', join(hostile, 'etc/passwd'));
  symlinkSync('/../../../etc/group', join(hostile, 'etc/group'));
  const hostileTar = execFileSync('tar', ['-C', hostile, '--numeric-owner', '--sort=name', '-cf', '-', '.']);
  rmSync(scratch, { recursive: true, force: true }); // the layers have it now
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  const bb = await pushImage(registry, 'busybox:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, StopSignal: 'SIGTERM' });
  const app = await pushImage(registry, 'busybox-app:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, User: 'app' });
  const usr2 = await pushImage(registry, 'busybox-usr2:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, StopSignal: 'SIGUSR2' });
  const hostileImg = await pushImage(registry, 'busybox-hostile:1', [{ blob: tar }, { blob: hostileTar }], { Cmd: ['sh'], Env: env });
  return { registry, busybox: bb.ref, busyboxApp: app.ref, busyboxUsr2: usr2.ref, busyboxHostile: hostileImg.ref, stop: () => registry.stop() };
}
