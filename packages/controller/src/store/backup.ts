// `controller backup` / `controller restore`: the store's keys and values as one JSON file, taken
// through the Store interface (etcd: one list at one revision) or, for an embedded store that its
// running controller holds locked, from its files without the lock. Values are copied as stored:
// the CA key and pod secrets stay sealed under the encryption key, so the backup is no more
// secret than the store. A restore writes into an empty store only and keeps every key, because
// sealed values are bound to their key (the key is the seal's context).
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fs, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { CelloError } from '../errors.js';
import { decodeFrames } from './embedded.js';
import type { Store } from './store.js';

export const BACKUP_FORMAT = 'cello-store-backup/v1';

const backupSchema = z
  .object({
    format: z.literal(BACKUP_FORMAT),
    createdAt: z.string(),
    controllerVersion: z.string(),
    controllerId: z.string(),
    /** The backend it was read from; any backend can be restored into. */
    source: z.enum(['embedded', 'etcd']),
    /** The source store's revision the entries were read at. */
    revision: z.number().int().nonnegative(),
    entries: z.array(z.object({ key: z.string().min(1), value: z.unknown() }).strict()),
  })
  .strict();

export type StoreBackup = z.infer<typeof backupSchema>;
export type BackupEntry = StoreBackup['entries'][number];

export class BackupError extends CelloError {
  constructor(message: string) {
    super('FailedPrecondition', message);
  }
}

/** Every entry of an open store, read at one revision. */
export async function readStoreEntries(store: Store): Promise<{ revision: number; entries: BackupEntry[] }> {
  const { items, revision } = await store.list('');
  return { revision, entries: items.map((kv) => ({ key: kv.key, value: kv.value })) };
}

/**
 * Every committed entry of an embedded store directory, read without its lock (the controller
 * keeps running). A compaction may rename the WAL and replace the snapshot meanwhile: the files
 * are read again until the snapshot and WAL files are the same before and after the read.
 */
export function readEmbeddedEntries(dir: string, attempts = 20): { revision: number; entries: BackupEntry[] } {
  for (let i = 0; i < attempts; i++) {
    const before = fileSetIdentity(dir);
    const read = readEmbeddedOnce(dir);
    if (read && fileSetIdentity(dir) === before) return read;
  }
  throw new BackupError(`${dir}: the store's files kept changing while they were read (compactions); try again`);
}

/** Names, inodes and sizes of the snapshot and WAL files; equal before and after = a stable read. */
function fileSetIdentity(dir: string): string {
  return readdirSync(dir)
    .filter((n) => n === 'snapshot.json' || /^wal(\.\d+)?\.log$/.test(n))
    .sort()
    .map((n) => {
      try {
        const s = statSync(join(dir, n));
        return `${n}:${s.ino}:${n === 'wal.log' ? '' : s.size}`;
      } catch {
        return `${n}:gone`;
      }
    })
    .join(',');
}

function readEmbeddedOnce(dir: string): { revision: number; entries: BackupEntry[] } | undefined {
  const values = new Map<string, string>();
  let revision = 0;
  let snap: string | undefined;
  try {
    snap = readFileSync(join(dir, 'snapshot.json'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (snap !== undefined) {
    const nl = snap.indexOf('\n');
    revision = (JSON.parse(snap.slice(0, nl)) as { revision: number }).revision;
    for (const [k, , , json] of JSON.parse(snap.slice(nl + 1)) as [string, number, number, string][]) values.set(k, json);
  }
  const segments = readdirSync(dir)
    .filter((n) => /^wal\.\d+\.log$/.test(n))
    .sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1]));
  for (const f of [...segments, 'wal.log']) {
    let buf: Buffer;
    try {
      buf = readFileSync(join(dir, f));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // wal.log is briefly absent while a compaction has renamed it to the newest segment and not
      // yet opened the next one: the segments hold every record. A missing segment was deleted
      // under a newer snapshot: read again.
      if (f === 'wal.log') continue;
      return undefined;
    }
    for (const r of decodeFrames(buf).records) {
      if (r.r <= revision) continue;
      if (r.o === 'p') values.set(r.k, r.v!);
      else values.delete(r.k);
      revision = r.r;
    }
  }
  const entries = [...values.keys()].sort().map((key) => ({ key, value: JSON.parse(values.get(key)!) as unknown }));
  return { revision, entries };
}

/** Pods whose secrets are stored unsealed (a controller without an encryption key wrote them). */
export function unsealedSecretKeys(entries: BackupEntry[]): string[] {
  return entries
    .filter((e) => {
      if (!e.key.startsWith('pods/')) return false;
      const s = (e.value as { secrets?: unknown } | null)?.secrets;
      return s !== null && typeof s === 'object' && Object.keys(s).length > 0;
    })
    .map((e) => e.key);
}

/** Writes the backup 0600 through a temporary file; an existing `out` is refused, never replaced. */
export async function writeBackup(out: string, backup: StoreBackup): Promise<void> {
  const tmp = join(dirname(out), `.${basename(out)}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(backup)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    // link() fails if `out` exists: an older backup is never overwritten by mistake.
    await fs.link(tmp, out).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') throw err;
      // A filesystem without hard links (vfat, SMB, FUSE mounts such as rclone's, which answer
      // EPERM, ENOTSUP, ENOSYS or even EIO): an exclusive copy keeps the same promise (EEXIST
      // when `out` exists), made durable itself. Where writing fails as well, the copy says why.
      await fs.copyFile(tmp, out, fsConstants.COPYFILE_EXCL);
      const copy = await fs.open(out, 'r'); // fsync needs no write access, and some FUSE mounts refuse it on an existing file
      try {
        await copy.sync();
      } finally {
        await copy.close();
      }
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new BackupError(`--out ${out}: the file exists; choose a new name`);
    throw err;
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

export async function readBackup(file: string): Promise<StoreBackup> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (err) {
    throw new BackupError(`--from ${file}: not a readable backup (${(err as Error).message})`);
  }
  const parsed = backupSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new BackupError(`--from ${file}: ${issue.path.join('.') || '(top level)'}: ${issue.message}`);
  }
  const seen = new Set<string>();
  for (const e of parsed.data.entries) {
    if (seen.has(e.key)) throw new BackupError(`--from ${file}: entries: key ${e.key} appears twice`);
    seen.add(e.key);
  }
  return parsed.data;
}

/**
 * Writes every entry into `store`, which must hold nothing: a restore never merges into a live
 * state (a half-merged store would have pods pointing at cells of another history).
 */
export async function restoreEntries(store: Store, backup: StoreBackup): Promise<number> {
  const present = await store.list('');
  if (present.items.length > 0) {
    throw new BackupError(
      `the ${store.kind} store is not empty (${present.items.length} keys, e.g. ${present.items[0]!.key}): restore only into an empty store (a new store.dir, or an etcd prefix that holds nothing)`,
    );
  }
  for (const e of backup.entries) await store.put(e.key, e.value, { expectRevision: 0 });
  return backup.entries.length;
}
