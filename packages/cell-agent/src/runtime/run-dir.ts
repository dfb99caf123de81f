// The agent's per-boot directory holds what runc is told to run (config.json, the shim's exit
// files, FIFOs, staged subPath mounts). Anyone who can plant a path there first (a symlink
// into /etc, a directory they own, as anyone can in /dev/shm) can redirect or rewrite it. So it
// lives under /run, and every component is checked: owned by root (the agent's user), not
// writable by others unless sticky, the directory itself no symlink; created 0700.
import { chmodSync, lstatSync, mkdirSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CelloError } from '@cello/proto';

/** The agent's run directory cannot be used as it must be. */
export class RunDirError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FailedPrecondition', message, options);
  }
}

/** Where the agent keeps per-boot files for a state dir when no --run-dir is given. */
export const RUN_BASE = '/run/cello';

function lstat(p: string): Stats | undefined {
  try {
    return lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Makes `dir` (and its missing parents, 0700) a directory only the agent's user controls, or
 * throws a RunDirError naming the component at fault.
 */
export function ensurePrivateDir(dir: string): void {
  const path = resolve(dir);
  const uid = process.geteuid?.() ?? 0;
  const chain: string[] = [];
  for (let p = path; ; p = dirname(p)) {
    chain.unshift(p);
    if (p === '/') break;
  }
  for (const p of chain) {
    let st = lstat(p);
    if (!st) {
      try {
        mkdirSync(p, { mode: 0o700 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      st = lstatSync(p);
    }
    const last = p === path;
    // A root-owned symlink among the parents (/var/run -> /run) was put there by root itself.
    if (st.isSymbolicLink() && (last || st.uid !== uid)) throw new RunDirError(`run dir ${path}: ${p} is a symlink; refusing to follow it`);
    if (st.uid !== uid) throw new RunDirError(`run dir ${path}: ${p} is owned by uid ${st.uid}, not ${uid === 0 ? 'root' : `uid ${uid}`}`);
    if (st.isSymbolicLink()) continue;
    if (!st.isDirectory()) throw new RunDirError(`run dir ${path}: ${p} is not a directory`);
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) throw new RunDirError(`run dir ${path}: ${p} is writable by others (mode ${(st.mode & 0o7777).toString(8)})`);
  }
  chmodSync(path, 0o700);
}
