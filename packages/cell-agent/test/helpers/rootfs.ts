// A busybox-static root filesystem for unit tests of the runtime, with users and groups to
// resolve: root, nobody, app (1234, group appgrp 1234, also in extra 2000).
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const BUSYBOX = '/bin/busybox';

export function requireTools(): void {
  for (const [cmd, pkg] of [
    ['runc', 'runc'],
    ['busybox', 'busybox-static'],
    ['mount', 'mount'],
  ] as const) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`]);
    } catch {
      throw new Error(`${cmd} is missing: apt-get install -y ${pkg} (or npm run setup)`);
    }
  }
  if (process.getuid?.() !== 0) throw new Error('the cell-agent runtime tests need root (runc, mounts, cgroups)');
}

export function makeBusyboxRootfs(dir: string): string {
  if (existsSync(join(dir, 'bin/busybox'))) return dir;
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'home/app', 'var/www']) mkdirSync(join(dir, d), { recursive: true });
  chmodSync(join(dir, 'tmp'), 0o1777);
  copyFileSync(BUSYBOX, join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'busybox') symlinkSync('busybox', join(dir, 'bin', a));
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1234:1234:app:/home/app:/bin/sh\n');
  writeFileSync(join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\nappgrp:x:1234:\nextra:x:2000:app\n');
  writeFileSync(join(dir, 'var/www/index.html'), 'hello from busybox httpd\n');
  return dir;
}
