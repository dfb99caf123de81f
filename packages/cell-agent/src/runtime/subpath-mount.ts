// subPath mounts without a check-then-use race (CVE-2017-1002101, CVE-2021-25741). A subPath
// names something inside a volume that other containers may be writing to at the same time:
// checking the path and handing the string to runc leaves a window in which a container swaps
// a component for a symlink to "/" and runc mounts the host. As the kubelet does, the agent
// opens the subPath one component at a time, each relative to the descriptor of the previous
// one and without following symlinks (so nothing can redirect a step), then bind-mounts the
// opened object itself (/proc/PID/fd/N) onto a private staging path that only root can reach;
// runc mounts the staging path, which no container can change.
import { execFile } from 'node:child_process';
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CelloError } from '@cello/proto';

// Node does not export O_PATH: an fd that names an object without opening it for I/O, so a
// FIFO or device planted at the subPath cannot block or trigger anything in the agent.
// (libuv adds O_CLOEXEC itself.)
const O_PATH = 0o10000000;
const STEP = O_PATH | constants.O_NOFOLLOW;

/** A volume subPath that is not allowed or would leave its volume. */
export class SubPathError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

function fdPath(fd: number, name?: string): string {
  return name === undefined ? `/proc/self/fd/${fd}` : `/proc/self/fd/${fd}/${name}`;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/**
 * Opens `rel` (relative, no `..`, symlinks already resolved by the caller) beneath the directory
 * `root`, refusing a symlink in any component. Missing components are created as directories
 * when `create` holds (as the kubelet creates a missing subPath). Returns an O_PATH fd.
 */
export function openBeneath(root: string, rel: string, create: boolean): number {
  const parts = rel.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw new SubPathError(`"${rel}" must not contain '..'`);
  let fd = openSync(root, O_PATH | constants.O_DIRECTORY);
  try {
    for (const [i, c] of parts.entries()) {
      let next: number;
      try {
        next = openSync(fdPath(fd, c), STEP);
      } catch (err) {
        if (errno(err) !== 'ENOENT' || !create) throw new SubPathError(`cannot open "${parts.slice(0, i + 1).join('/')}": ${(err as Error).message}`);
        try {
          mkdirSync(fdPath(fd, c), { mode: 0o755 });
        } catch (e) {
          if (errno(e) !== 'EEXIST') throw new SubPathError(`cannot create "${parts.slice(0, i + 1).join('/')}": ${(e as Error).message}`);
        }
        next = openSync(fdPath(fd, c), STEP);
      }
      const st = fstatSync(next);
      const last = i === parts.length - 1;
      if (st.isSymbolicLink() || (!last && !st.isDirectory())) {
        closeSync(next);
        const what = st.isSymbolicLink() ? 'is a symlink (it changed after it was resolved)' : 'is not a directory';
        throw new SubPathError(`"${parts.slice(0, i + 1).join('/')}" ${what}`);
      }
      closeSync(fd);
      fd = next;
    }
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, (err, _o, stderr) => (err ? reject(new Error(`${cmd} ${args.join(' ')}: ${String(stderr).trim() || err.message}`)) : resolve())),
  );
}

/** Mount points at or below `dir`, deepest first (from this process's mount table). */
function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => m !== undefined)
    .map(unescape)
    .filter((m) => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

async function unmountAll(dir: string): Promise<void> {
  // Stacked mounts (a remount over a leftover) need one umount each.
  for (let round = 0; round < 16; round++) {
    const ms = mountsUnder(dir);
    if (ms.length === 0) return;
    for (const m of ms) await run('umount', ['-l', m]).catch(() => {});
  }
  if (mountsUnder(dir).length > 0) throw new SubPathError(`cannot unmount staged subPaths under ${dir}`);
}

/**
 * Removes a staging tree once nothing is mounted there: `levels` directories above the mount
 * points (pod dir: 2, a unit's: 1, a mount point: 0). Only what staging made is removed:
 * directories (rmdir, so only empty ones) and empty files; anything else means a mount is
 * still there, and its contents are a volume's (or the host's).
 */
function removeStaging(p: string, levels: number): void {
  let st;
  try {
    st = lstatSync(p);
  } catch {
    return;
  }
  if (st.isDirectory()) {
    if (levels > 0) for (const e of readdirSync(p)) removeStaging(join(p, e), levels - 1);
    rmdirSync(p);
  } else if (st.isFile() && st.size === 0) unlinkSync(p);
  else throw new SubPathError(`${p} is not an unused staging path; not removing it`);
}

/**
 * Stages `rel` of the volume at `root` on `staging` (a path under the agent's run dir, one per
 * unit and mount): opens it safely, bind-mounts the opened object there, and checks that the
 * mount shows that very object. Returns the staging path, for runc to mount.
 */
export async function stageSubPath(root: string, rel: string, staging: string): Promise<string> {
  const fd = openBeneath(root, rel, true);
  try {
    const want = fstatSync(fd);
    await unmountAll(staging);
    removeStaging(staging, 0);
    mkdirSync(dirname(staging), { recursive: true, mode: 0o700 });
    if (want.isDirectory()) mkdirSync(staging, { mode: 0o700 });
    else closeSync(openSync(staging, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
    // /proc/PID/fd/N (not /proc/self: that would be mount's own) leads the kernel to the object
    // this fd holds; --no-canonicalize keeps mount from turning it back into a path string.
    await run('mount', ['--no-canonicalize', '--bind', `/proc/${process.pid}/fd/${fd}`, staging]);
    const got = statSync(staging);
    if (got.dev !== want.dev || got.ino !== want.ino) {
      await unmountAll(staging);
      throw new SubPathError(`staged mount of "${rel}" does not show the object that was opened`);
    }
    return staging;
  } finally {
    closeSync(fd);
  }
}

/** Unmounts and removes every staged subPath under `dir`: the pod's (RUN/subpaths) or a unit's. */
export async function removeStagedSubPaths(dir: string, scope: 'pod' | 'unit'): Promise<void> {
  await unmountAll(dir);
  removeStaging(dir, scope === 'pod' ? 2 : 1);
}
