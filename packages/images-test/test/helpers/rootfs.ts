// A Debian 12 root filesystem made by images/test/rootfs.sh (debootstrap), built once per
// change of that script and cached under /var/cache/cello/rootfs.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireCommand } from '@cello/testkit';
import { cacheRoot, hashInputs, imagesDir } from './paths.js';

export function ensureRootfs(kind: 'base' | 'bootable'): string {
  requireCommand('debootstrap', 'debootstrap');
  const script = join(imagesDir, 'test', 'rootfs.sh');
  const dir = join(cacheRoot, 'rootfs', `${kind}-${hashInputs([script])}`);
  if (existsSync(`${dir}.complete`)) return dir;
  mkdirSync(join(cacheRoot, 'rootfs'), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  execFileSync('sh', [script, ...(kind === 'bootable' ? ['--bootable'] : []), tmp], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  writeFileSync(`${dir}.complete`, `${new Date().toISOString()}\n`);
  return dir;
}
