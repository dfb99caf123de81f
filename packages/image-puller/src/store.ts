import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The on-disk cache. Everything becomes visible by one atomic rename of fully written, verified
 * content, so a process killed at any point leaves only stray temp files (swept later), never a
 * half-written blob or layer. Locks only avoid duplicate work between processes; correctness
 * never depends on them.
 *
 *   blobs/sha256/HEX   verified blobs (manifests, configs, compressed layers)
 *   layers/HEX         unpacked layers in overlay form, named by ChainID
 *   images/KEY.json    what a reference resolved to when last pulled
 *   tmp/PID.RAND*      in-progress downloads and unpacks
 *   locks/NAME         PID of the process doing NAME
 *   leases/PID.RAND    digests and ChainIDs a running pull uses; `gc` in any process keeps them
 */
export class Store {
  readonly blobs: string;
  readonly layers: string;
  readonly images: string;
  readonly tmp: string;
  readonly locks: string;
  readonly leases: string;

  constructor(readonly root: string) {
    this.blobs = join(root, 'blobs', 'sha256');
    this.layers = join(root, 'layers');
    this.images = join(root, 'images');
    this.tmp = join(root, 'tmp');
    this.locks = join(root, 'locks');
    this.leases = join(root, 'leases');
    for (const d of [this.blobs, this.layers, this.images, this.tmp, this.locks, this.leases]) mkdirSync(d, { recursive: true, mode: 0o700 });
  }

  blobPath(digest: string): string {
    return join(this.blobs, digest.slice('sha256:'.length));
  }

  layerPath(chainId: string): string {
    return join(this.layers, chainId.slice('sha256:'.length));
  }

  hasBlob(digest: string): boolean {
    return existsSync(this.blobPath(digest));
  }

  tmpPath(tag: string): string {
    return join(this.tmp, `${process.pid}.${randomBytes(6).toString('hex')}.${tag}`);
  }

  async readBlob(digest: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.blobPath(digest));
    } catch {
      return undefined;
    }
  }

  /** Small blobs (manifests, configs) the caller has already verified. */
  async writeBlob(digest: string, bytes: Buffer): Promise<void> {
    if (this.hasBlob(digest)) return;
    const tmp = this.tmpPath('blob');
    await writeFile(tmp, bytes, { mode: 0o644 });
    await rename(tmp, this.blobPath(digest));
  }

  commitBlob(tmp: string, digest: string): void {
    renameSync(tmp, this.blobPath(digest));
  }

  /** Publishes an unpacked layer; loses gracefully to a concurrent publisher of the same ChainID. */
  async commitLayer(tmpDir: string, chainId: string): Promise<void> {
    try {
      await rename(tmpDir, this.layerPath(chainId));
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      await rm(tmpDir, { recursive: true, force: true });
    }
  }

  /** Removes temp files and leases of processes that no longer run (after a crash or kill -9). */
  sweepTmp(): void {
    for (const dir of [this.tmp, this.leases]) {
      for (const n of readdirSync(dir)) {
        const pid = Number(n.split('.')[0]);
        if (pid === process.pid || (Number.isInteger(pid) && alive(pid))) continue;
        rmSync(join(dir, n), { recursive: true, force: true });
      }
    }
  }

  /**
   * Runs `fn` while this process holds a lease on `items` (blob digests, layer ChainIDs), so a
   * `gc` in another process keeps them. The lease is taken under the gc lock: it either lands
   * before a collection starts (and is honoured) or after it ends (and then `fn` sees what was
   * removed as missing, and fetches it again).
   */
  async withLease<T>(items: string[], fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const file = join(this.leases, `${process.pid}.${randomBytes(6).toString('hex')}`);
    await this.withLock('gc', async () => writeFile(file, items.join('\n')), GC_LOCK_MS, signal);
    try {
      return await fn();
    } finally {
      rmSync(file, { force: true });
    }
  }

  /** What the live leases of every process name (hex digests and ChainIDs, without `sha256:`). */
  leased(): Set<string> {
    const out = new Set<string>();
    for (const n of readdirSync(this.leases)) {
      const pid = Number(n.split('.')[0]);
      if (pid !== process.pid && !(Number.isInteger(pid) && alive(pid))) continue;
      let body: string;
      try {
        body = readFileSync(join(this.leases, n), 'utf8');
      } catch {
        continue; // released meanwhile
      }
      for (const item of body.split('\n')) if (item) out.add(item.replace(/^sha256:/, ''));
    }
    return out;
  }

  /**
   * Removes lock `file` if it still is the one whose holder `deadPid` we found dead. Unlinking
   * by name could remove a lock another waiter took meanwhile (it broke the stale one first), so
   * the file is renamed aside, atomically, and put back if it turns out to be a live one.
   */
  private breakStale(file: string, deadPid: number): void {
    const aside = this.tmpPath('stale-lock');
    try {
      renameSync(file, aside);
    } catch {
      return; // released or broken meanwhile
    }
    let pid = NaN;
    try {
      pid = Number(readFileSync(aside, 'utf8').trim());
    } catch {
      /* unreadable: treat as stale */
    }
    if (pid !== deadPid && Number.isInteger(pid) && pid > 0 && alive(pid)) {
      try {
        linkSync(aside, file);
      } catch {
        /* taken again meanwhile: two holders, which costs duplicate work only */
      }
    }
    rmSync(aside, { force: true });
  }

  /**
   * Runs `fn` while holding lock NAME (a file holding our PID). A lock whose holder is dead is
   * broken. Waiting is bounded by `timeoutMs`; past it we go ahead anyway, since the lock only
   * saves duplicate work.
   */
  async withLock<T>(name: string, fn: () => Promise<T>, timeoutMs = 15 * 60_000, signal?: AbortSignal): Promise<T> {
    const file = join(this.locks, name);
    const held = await this.acquire(file, Date.now() + timeoutMs, signal);
    try {
      return await fn();
    } finally {
      if (held) {
        try {
          unlinkSync(file);
        } catch {
          /* already gone */
        }
      }
    }
  }

  /** Takes lock `file`, breaking it if its holder is dead; false when `deadline` passed first. */
  private async acquire(file: string, deadline: number, signal: AbortSignal | undefined): Promise<boolean> {
    // The lock appears with our PID already in it (written aside, then hard-linked into place):
    // created empty and written after, another process could read it empty in between, take
    // the holder for dead and break a live lock.
    const mine = this.tmpPath('lock');
    writeFileSync(mine, `${process.pid}\n`, { mode: 0o600 });
    try {
      for (;;) {
        try {
          linkSync(mine, file);
          return true;
        } catch (err) {
          if ((err as { code?: string }).code !== 'EEXIST') throw err;
        }
        let pid = NaN;
        try {
          pid = Number(readFileSync(file, 'utf8').trim());
        } catch {
          continue;
        }
        if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) {
          this.breakStale(file, pid);
          continue;
        }
        if (Date.now() > deadline) return false;
        await sleep(50 + Math.random() * 50, undefined, signal ? { signal } : undefined);
      }
    } finally {
      rmSync(mine, { force: true });
    }
  }
}

/** A collection of a large cache can take minutes; pulls wait for it rather than race it. */
export const GC_LOCK_MS = 30 * 60_000;

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}
