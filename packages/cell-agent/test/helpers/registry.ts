// A real registry (CNCF distribution via @cello/testkit) holding busybox images built from the
// test rootfs: `busybox` (root), `busybox-app` (USER app, resolved from its /etc/passwd) and
// `busybox-usr2` (StopSignal SIGUSR2).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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
  stop(): Promise<void>;
}

export async function startTestRegistry(): Promise<TestImages> {
  const registry = await startRegistry();
  const scratch = mkdtempSync(join(tmpdir(), 'cello-rootfs-'));
  const rootfs = makeBusyboxRootfs(join(scratch, 'rootfs'));
  const tar = execFileSync('tar', ['-C', rootfs, '--numeric-owner', '--sort=name', '-cf', '-', '.'], { maxBuffer: 64 << 20 });
  rmSync(scratch, { recursive: true, force: true }); // the layer has it now
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  const bb = await pushImage(registry, 'busybox:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, StopSignal: 'SIGTERM' });
  const app = await pushImage(registry, 'busybox-app:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, User: 'app' });
  const usr2 = await pushImage(registry, 'busybox-usr2:1', [{ blob: tar }], { Cmd: ['sh'], Env: env, StopSignal: 'SIGUSR2' });
  return { registry, busybox: bb.ref, busyboxApp: app.ref, busyboxUsr2: usr2.ref, stop: () => registry.stop() };
}
