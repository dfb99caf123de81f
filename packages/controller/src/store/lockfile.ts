// Single-writer lock for a store directory. Node has no flock(), so this is an O_EXCL pid lock:
// the file names its owner by pid and process start time (from /proc, so a recycled pid is not
// mistaken for the owner). A lock whose owner is gone is stale and may be taken over; the
// takeover itself is serialised by a second O_EXCL file so two newcomers cannot both win.
import { randomUUID } from 'node:crypto';
import { constants, promises as fs, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { CelloError } from '../errors.js';

export interface LockOwner {
  pid: number;
  /** Process start time in clock ticks since boot (field 22 of /proc/PID/stat). */
  startTime: string;
  host: string;
  token: string;
  acquiredAt: string;
}

export class StoreLockedError extends CelloError {
  constructor(
    readonly path: string,
    readonly owner: LockOwner,
  ) {
    super(
      'FailedPrecondition',
      `store directory is locked by pid ${owner.pid} on ${owner.host} (since ${owner.acquiredAt}); ` + `only one controller may open it at a time (lock file: ${path})`,
    );
  }
}

export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

function ownerAlive(owner: LockOwner): boolean {
  if (owner.host !== hostname()) return true; // cannot judge another host's processes: assume alive
  const start = processStartTime(owner.pid);
  if (start === undefined) {
    try {
      process.kill(owner.pid, 0);
      return true; // exists but /proc unreadable: be conservative
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
  return start === owner.startTime;
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await fs.readFile(path, 'utf8')) as LockOwner;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    // A lock file that exists but does not parse was torn by a crash during creation.
    return { pid: -1, startTime: '', host: hostname(), token: '', acquiredAt: 'unknown' };
  }
}

export class DirLock {
  private constructor(
    readonly path: string,
    readonly owner: LockOwner,
  ) {}

  /** Takes the lock or throws StoreLockedError naming the live owner. */
  static async acquire(path: string): Promise<DirLock> {
    const me: LockOwner = {
      pid: process.pid,
      startTime: processStartTime(process.pid) ?? '',
      host: hostname(),
      token: randomUUID(),
      acquiredAt: new Date().toISOString(),
    };
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const fh = await fs.open(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
        try {
          await fh.writeFile(JSON.stringify(me));
          await fh.sync();
        } finally {
          await fh.close();
        }
        return new DirLock(path, me);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = await readOwner(path);
      if (owner === undefined) continue; // released meanwhile
      if (owner.pid !== -1 && ownerAlive(owner)) throw new StoreLockedError(path, owner);
      await DirLock.breakStale(path, owner);
    }
    throw new Error(`could not acquire store lock ${path}: contended`);
  }

  private static async breakStale(path: string, stale: LockOwner): Promise<void> {
    const guard = `${path}.takeover`;
    let fh;
    try {
      fh = await fs.open(guard, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
      await fh.writeFile(String(process.pid));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // Someone else is taking over; if that someone died mid-takeover, clear its guard.
      const pid = Number(await fs.readFile(guard, 'utf8').catch(() => 'NaN'));
      if (!Number.isFinite(pid) || processStartTime(pid) === undefined) await fs.rm(guard, { force: true });
      return;
    } finally {
      await fh?.close();
    }
    try {
      const now = await readOwner(path);
      if (now !== undefined && now.token === stale.token) await fs.rm(path, { force: true });
    } finally {
      await fs.rm(guard, { force: true });
    }
  }

  /** True while the lock file still names this owner (false if someone broke it). */
  async held(): Promise<boolean> {
    const owner = await readOwner(this.path);
    return owner?.token === this.owner.token;
  }

  async release(): Promise<void> {
    if (await this.held()) await fs.rm(this.path, { force: true });
  }
}
