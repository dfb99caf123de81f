// The default store: one controller, state on local disk, nothing acknowledged ever lost.
//
// On disk (in `dir`):
//   LOCK            single-writer pid lock (lockfile.ts)
//   snapshot.json   the whole state at some revision, written to a temp file, fsynced, renamed
//   wal.log         records after that revision: [u32 length][u32 crc32][JSON payload] frames
//   wal.<n>.log     older WAL segments while a snapshot is being written (see compaction)
//
// A write is assigned its revision synchronously (so compare-and-swap sees every earlier write,
// durable or not), queued, and acknowledged only after the batch holding it is written and
// fdatasync'ed. Writes that arrive while a sync is running wait for the next one together
// (group commit), so N concurrent puts cost ~1 fsync, not N. Readers and watchers only ever see
// the committed (synced) state, so nobody acts on a write that a crash could take back.
// Recovery: load the snapshot, replay WAL frames after its revision (older segments first), and
// cut the file at the first frame that is short or fails its checksum (a torn tail from a crash
// mid-append — never acknowledged, because the sync had not returned).
// Compaction never stalls writes: between two batches the WAL is renamed to the next segment and
// a fresh wal.log takes the writes, while the state at that revision is written as a snapshot in
// the background, in slices that yield to the event loop; once the snapshot is renamed into place
// and the directory synced, the segments it covers are deleted. A crash anywhere in between
// leaves a snapshot (old or new) plus segments that replay on top of it.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { Registry } from 'prom-client';
import { DirLock } from './lockfile.js';
import { StoreMetrics } from './metrics.js';
import { SortedKeys } from './sorted-keys.js';
import {
  CompactedError,
  ConflictError,
  NotLeaderError,
  StoreClosedError,
  type DeleteOptions,
  type KeyValue,
  type Leadership,
  type PutOptions,
  type Store,
  type WatchEvent,
} from './store.js';
import { WatchStream } from './watch-stream.js';
import { checkKey, toJson } from './entry.js';

export interface EmbeddedStoreOptions {
  dir: string;
  /** Compact the WAL into a snapshot once it grows past this many bytes. Default 16 MiB. */
  compactBytes?: number;
  /** Watch history kept in memory for resuming watches, in events. Default 100,000. */
  historyEvents?: number;
  /** ... and in bytes of keys and values. Default 32 MiB. */
  historyBytes?: number;
  /** How often to check that nobody broke our directory lock, in ms. Default 2000. */
  lockCheckMs?: number;
  logger?: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
  /** Registers store metrics (latency, fsync batch sizes, leadership) here when given. */
  registry?: Registry;
}

interface Entry {
  json: string;
  modRevision: number;
  createRevision: number;
}

/** One WAL record. `v` is the JSON text of the value (absent for deletes). */
interface Rec {
  r: number;
  o: 'p' | 'd';
  k: string;
  v?: string;
}

interface PendingWrite {
  rec: Rec;
  resolve(): void;
  reject(err: Error): void;
}

interface ElectionSlot {
  holder: { candidate: string; ctl: AbortController } | undefined;
  waiters: { candidate: string; resolve(): void; reject(err: Error): void; signal?: AbortSignal }[];
}

const SNAPSHOT = 'snapshot.json';
const WAL = 'wal.log';
const HEADER = 8;
const MAX_RECORD = 64 * 1024 * 1024;

/**
 * A put's payload is its metadata as JSON, a newline, then the value's JSON text as is: writing
 * the value as a JSON string inside the record would escape every quote in it on each write (and
 * unescape on recovery). Neither part can contain a raw newline (JSON.stringify never emits one),
 * and frames of the older all-JSON form (deletes still use it) have none, so both decode.
 */
export function encodeFrame(rec: Rec): Buffer {
  const text = rec.o === 'p' ? `{"r":${rec.r},"o":"p","k":${JSON.stringify(rec.k)}}\n${rec.v}` : JSON.stringify(rec);
  const payload = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(HEADER + payload.length);
  buf.writeUInt32LE(payload.length, 0);
  buf.writeUInt32LE(crc32(payload), 4);
  payload.copy(buf, HEADER);
  return buf;
}

/** Parses frames until the first bad one; returns the records and the length of the good prefix. */
export function decodeFrames(buf: Buffer): { records: Rec[]; goodBytes: number } {
  const records: Rec[] = [];
  let off = 0;
  while (off + HEADER <= buf.length) {
    const len = buf.readUInt32LE(off);
    const sum = buf.readUInt32LE(off + 4);
    if (len > MAX_RECORD || off + HEADER + len > buf.length) break;
    const payload = buf.subarray(off + HEADER, off + HEADER + len);
    if (crc32(payload) !== sum) break;
    let rec: Rec;
    try {
      const nl = payload.indexOf(0x0a);
      if (nl < 0) rec = JSON.parse(payload.toString('utf8')) as Rec;
      else rec = { ...(JSON.parse(payload.toString('utf8', 0, nl)) as Rec), v: payload.toString('utf8', nl + 1) };
    } catch {
      break;
    }
    if (typeof rec.r !== 'number' || typeof rec.k !== 'string' || (rec.o !== 'p' && rec.o !== 'd')) break;
    records.push(rec);
    off += HEADER + len;
  }
  return { records, goodBytes: off };
}

// The store holds the CA's sealed key, pod secrets (sealed) and every pod spec: only the
// controller's user may read it. Files are created 0600 in a 0700 directory whatever the umask,
// and a directory left wider by an earlier version (or made by hand) is narrowed at open.
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;

/** A WAL file, created (or, if an earlier version made it wider, narrowed) to FILE_MODE. */
async function openWal(path: string): Promise<fs.FileHandle> {
  const fh = await fs.open(path, 'a+', FILE_MODE);
  try {
    if (((await fh.stat()).mode & 0o777) !== FILE_MODE) await fh.chmod(FILE_MODE);
  } catch (err) {
    await fh.close();
    throw err;
  }
  return fh;
}

/** The directory 0700 and every file already in it 0600 (files from before modes were set). */
async function narrowModes(dir: string): Promise<void> {
  await fs.chmod(dir, DIR_MODE);
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(dir, e.name);
    if (((await fs.lstat(p)).mode & 0o777) !== FILE_MODE) await fs.chmod(p, FILE_MODE);
  }
}

async function syncDir(dir: string): Promise<void> {
  const d = await fs.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function recordSize(rec: Rec): number {
  return rec.k.length + (rec.v?.length ?? 0) + 48;
}

export class EmbeddedStore implements Store {
  readonly kind = 'embedded' as const;

  private readonly entries = new Map<string, Entry>();
  private readonly sortedKeys = new SortedKeys();
  /** The background snapshot, while one is being written. */
  private compacting: Promise<void> | undefined;
  /** Highest WAL segment number in use (segments are wal.<n>.log, older than wal.log). */
  private segmentSeq = 0;
  /** Latest assigned modRevision per key for writes not yet committed (0: pending delete). */
  private readonly overlay = new Map<string, number>();
  private committedRev = 0;
  private assignedRev = 0;
  private pending: PendingWrite[] = [];
  private flushing = false;
  private walBytes = 0;
  private readonly history: Rec[] = [];
  private historyBytes = 0;
  /** Size of the last snapshot: the WAL may grow at least this much before the next one. */
  private snapshotBytes = 0;
  /** Watches may resume after any revision >= this. */
  private historyFloor = 0;
  private readonly watchers = new Set<{ prefix: string; stream: WatchStream<unknown> }>();
  private readonly elections = new Map<string, ElectionSlot>();
  private closedWhy: string | undefined;
  private lockTimer: NodeJS.Timeout | undefined;
  private flushDone: Promise<void> = Promise.resolve();
  /** fsyncs and records written since open, for benchmarks and metrics. */
  readonly stats = { syncs: 0, records: 0, compactions: 0, tornBytesRepaired: 0 };

  private constructor(
    readonly dir: string,
    private readonly lock: DirLock,
    private wal: fs.FileHandle,
    private readonly opts: Required<Omit<EmbeddedStoreOptions, 'logger' | 'registry'>> & Pick<EmbeddedStoreOptions, 'logger' | 'registry'>,
  ) {
    this.metrics = opts.registry ? new StoreMetrics(opts.registry, 'embedded') : undefined;
  }

  private readonly metrics: StoreMetrics | undefined;

  static async open(options: EmbeddedStoreOptions): Promise<EmbeddedStore> {
    checkKey(options.dir, 'store.dir');
    const opts = {
      compactBytes: 16 * 1024 * 1024,
      historyEvents: 100_000,
      historyBytes: 32 * 1024 * 1024,
      lockCheckMs: 2000,
      ...options,
    };
    await fs.mkdir(opts.dir, { recursive: true, mode: DIR_MODE });
    const lock = await DirLock.acquire(join(opts.dir, 'LOCK'));
    try {
      await fs.rm(join(opts.dir, `${SNAPSHOT}.tmp`), { force: true });
      await narrowModes(opts.dir);
      const wal = await openWal(join(opts.dir, WAL));
      // A WAL created just now must survive a crash as a directory entry too.
      await syncDir(opts.dir);
      const store = new EmbeddedStore(opts.dir, lock, wal, opts);
      await store.recover();
      store.lockTimer = setInterval(() => void store.checkLock(), opts.lockCheckMs);
      store.lockTimer.unref();
      return store;
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  private async recover(): Promise<void> {
    let snapRev = 0;
    let snapText: string | undefined;
    try {
      snapText = await fs.readFile(join(this.dir, SNAPSHOT), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (snapText !== undefined) {
      const nl = snapText.indexOf('\n');
      const header = JSON.parse(snapText.slice(0, nl)) as { format: number; revision: number; crc32: number };
      const body = snapText.slice(nl + 1);
      this.snapshotBytes = Buffer.byteLength(snapText);
      if (header.format !== 1 || crc32(Buffer.from(body, 'utf8')) !== header.crc32) {
        throw new Error(`store snapshot ${join(this.dir, SNAPSHOT)} is corrupt (checksum mismatch); restore it from a backup`);
      }
      const rows = JSON.parse(body) as [string, number, number, string][];
      for (const [key, modRevision, createRevision, json] of rows) this.entries.set(key, { json, modRevision, createRevision });
      this.sortedKeys.reset([...this.entries.keys()]);
      snapRev = header.revision;
    }
    this.committedRev = snapRev;
    this.historyFloor = snapRev;

    // Segments left by a compaction that had not finished: complete, older than wal.log.
    for (const { seq, path } of await this.segments()) {
      this.segmentSeq = Math.max(this.segmentSeq, seq);
      const { records } = decodeFrames(await fs.readFile(path));
      for (const rec of records) if (rec.r > this.committedRev) this.apply(rec, false);
    }

    const buf = await this.wal.readFile();
    const { records, goodBytes } = decodeFrames(buf);
    for (const rec of records) {
      if (rec.r <= this.committedRev) continue; // already in the snapshot (crash before WAL truncate)
      this.apply(rec, false);
    }
    if (goodBytes < buf.length) {
      this.stats.tornBytesRepaired = buf.length - goodBytes;
      this.opts.logger?.warn(
        { dir: this.dir, discardedBytes: buf.length - goodBytes, keptRecords: records.length },
        'store WAL had a torn tail (crash during an unacknowledged write); truncated it',
      );
      await this.wal.truncate(goodBytes);
      await this.wal.datasync();
    }
    this.walBytes = goodBytes;
    this.assignedRev = this.committedRev;
  }

  /** Older WAL segments, oldest first. */
  private async segments(): Promise<{ seq: number; path: string }[]> {
    const out: { seq: number; path: string }[] = [];
    for (const n of await fs.readdir(this.dir)) {
      const m = /^wal\.(\d+)\.log$/.exec(n);
      if (m) out.push({ seq: Number(m[1]), path: join(this.dir, n) });
    }
    return out.sort((a, b) => a.seq - b.seq);
  }

  private async checkLock(): Promise<void> {
    if (this.closedWhy !== undefined) return;
    if (!(await this.lock.held().catch(() => false))) {
      this.fail(`lost the store directory lock ${this.lock.path} (another process took it over)`);
    }
  }

  private ensureOpen(): void {
    if (this.closedWhy !== undefined) throw new StoreClosedError(this.closedWhy);
  }

  private currentRevisionOf(key: string): number {
    const o = this.overlay.get(key);
    if (o !== undefined) return o;
    return this.entries.get(key)?.modRevision ?? 0;
  }

  /**
   * Waits while a write matching `pending` is in flight. Reads never show uncommitted data, and
   * this keeps them from showing data older than a write that was already accepted — so a
   * read-modify-CAS loop does not spin on a revision it can never see.
   */
  private async settle(pending: (key: string) => boolean): Promise<void> {
    let inFlight = false;
    for (const k of this.overlay.keys()) {
      if (pending(k)) {
        inFlight = true;
        break;
      }
    }
    if (!inFlight) return;
    // Wait only for writes accepted before this read, so a steady stream of newer writes
    // cannot starve it.
    const target = this.assignedRev;
    while (this.committedRev < target) {
      this.ensureOpen();
      await new Promise<void>((resolve) => this.batchWaiters.push(resolve));
    }
    this.ensureOpen();
  }

  private batchWaiters: (() => void)[] = [];

  private wakeReaders(): void {
    for (const w of this.batchWaiters.splice(0)) w();
  }

  async get<T>(key: string): Promise<KeyValue<T> | undefined> {
    this.ensureOpen();
    checkKey(key);
    if (this.overlay.has(key)) await this.settle((k) => k === key);
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    return { key, value: JSON.parse(e.json) as T, modRevision: e.modRevision };
  }

  async list<T>(prefix: string): Promise<{ items: KeyValue<T>[]; revision: number }> {
    this.ensureOpen();
    if (typeof prefix !== 'string') throw new TypeError('prefix must be a string');
    if (this.overlay.size > 0) await this.settle((k) => k.startsWith(prefix));
    const items: KeyValue<T>[] = [];
    for (const key of this.sortedKeys.from(prefix)) {
      if (!key.startsWith(prefix)) break;
      const e = this.entries.get(key)!;
      items.push({ key, value: JSON.parse(e.json) as T, modRevision: e.modRevision });
    }
    return { items, revision: this.committedRev };
  }

  /** Leaderships this store handed out, for fenced writes. */
  private readonly fences = new WeakMap<Leadership, { name: string; candidate: string; held(): boolean }>();

  private checkFence(leader: Leadership | undefined): void {
    if (leader === undefined) return;
    const f = this.fences.get(leader);
    if (f === undefined) throw new TypeError('opts.leader is not a leadership obtained from this store');
    if (!f.held()) throw new NotLeaderError(f.name, f.candidate);
  }

  async put<T>(key: string, value: T, opts?: PutOptions): Promise<number> {
    this.ensureOpen();
    checkKey(key);
    const json = toJson(key, value);
    this.checkFence(opts?.leader);
    if (opts?.expectRevision !== undefined) {
      const actual = this.currentRevisionOf(key);
      if (actual !== opts.expectRevision) throw new ConflictError(key, opts.expectRevision, actual);
    }
    const rev = ++this.assignedRev;
    this.overlay.set(key, rev);
    const done = this.enqueue({ r: rev, o: 'p', k: key, v: json });
    await (this.metrics ? this.metrics.time('put', done) : done);
    return rev;
  }

  async delete(key: string, opts?: DeleteOptions): Promise<boolean> {
    this.ensureOpen();
    checkKey(key);
    this.checkFence(opts?.leader);
    const actual = this.currentRevisionOf(key);
    if (opts?.expectRevision !== undefined && actual !== opts.expectRevision) {
      throw new ConflictError(key, opts.expectRevision, actual);
    }
    if (actual === 0) return false;
    const rev = ++this.assignedRev;
    this.overlay.set(key, 0);
    await this.enqueue({ r: rev, o: 'd', k: key });
    return true;
  }

  private enqueue(rec: Rec): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ rec, resolve, reject });
      if (!this.flushing) {
        this.flushing = true;
        // setImmediate rather than a microtask: lets every put issued in this turn join the batch.
        this.flushDone = new Promise<void>((done) => setImmediate(() => void this.flushLoop().finally(done)));
      }
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const batch = this.pending;
        this.pending = [];
        if (this.closedWhy !== undefined && !this.closing) {
          for (const w of batch) w.reject(new StoreClosedError(this.closedWhy));
          continue;
        }
        const buf = Buffer.concat(batch.map((w) => encodeFrame(w.rec)));
        try {
          await this.wal.write(buf);
          await this.wal.datasync();
        } catch (err) {
          // Disk and memory may now disagree about this batch: refuse everything from here on.
          const e = err instanceof Error ? err : new Error(String(err));
          this.fail(`write to ${join(this.dir, WAL)} failed: ${e.message}`);
          for (const w of batch) w.reject(e);
          for (const w of this.pending.splice(0)) w.reject(e);
          this.wakeReaders();
          return;
        }
        this.stats.syncs++;
        this.stats.records += batch.length;
        this.metrics?.syncBatch.observe(batch.length);
        this.walBytes += buf.length;
        for (const w of batch) {
          this.apply(w.rec, true);
          if (this.overlay.get(w.rec.k) === (w.rec.o === 'p' ? w.rec.r : 0)) this.overlay.delete(w.rec.k);
        }
        for (const w of batch) w.resolve();
        this.wakeReaders();
        if (this.walBytes >= Math.max(this.opts.compactBytes, this.snapshotBytes) && this.closedWhy === undefined && this.compacting === undefined) {
          try {
            await this.startCompaction();
          } catch (err) {
            // Not fatal: the WAL still holds everything; try again after the next batch.
            this.opts.logger?.warn({ err, dir: this.dir }, 'store compaction failed');
          }
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Applies a committed record to memory and to watchers. */
  private apply(rec: Rec, live: boolean): void {
    if (rec.o === 'p') {
      const prev = this.entries.get(rec.k);
      if (prev === undefined) this.sortedKeys.insert(rec.k);
      this.entries.set(rec.k, { json: rec.v!, modRevision: rec.r, createRevision: prev?.createRevision ?? rec.r });
    } else if (this.entries.delete(rec.k)) {
      this.sortedKeys.delete(rec.k);
    }
    this.committedRev = rec.r;
    this.history.push(rec);
    this.historyBytes += recordSize(rec);
    if (this.history.length > this.opts.historyEvents || this.historyBytes > this.opts.historyBytes) {
      // Drop a tenth more than needed at once: one splice per many writes, not one per write.
      let n = 0;
      let bytes = this.historyBytes;
      const keepEvents = Math.floor(this.opts.historyEvents * 0.9);
      const keepBytes = Math.floor(this.opts.historyBytes * 0.9);
      while (n < this.history.length - 1 && (this.history.length - n > keepEvents || bytes > keepBytes)) bytes -= recordSize(this.history[n++]!);
      const dropped = this.history.splice(0, n);
      this.historyBytes = bytes;
      if (dropped.length > 0) this.historyFloor = dropped[dropped.length - 1]!.r;
    }
    if (live) for (const w of this.watchers) if (rec.k.startsWith(w.prefix)) w.stream.push(toEvent(rec));
  }

  /**
   * Runs inside the flush loop, between batches: captures the committed state, moves wal.log
   * aside as the next segment and opens a fresh one, then writes the snapshot in the background.
   */
  private async startCompaction(): Promise<void> {
    const rows: [string, number, number, string][] = [];
    for (const key of this.sortedKeys) {
      const e = this.entries.get(key)!;
      rows.push([key, e.modRevision, e.createRevision, e.json]);
    }
    const revision = this.committedRev;
    const seq = this.segmentSeq + 1;
    await this.wal.close();
    await fs.rename(join(this.dir, WAL), join(this.dir, `wal.${seq}.log`));
    this.segmentSeq = seq;
    this.wal = await openWal(join(this.dir, WAL));
    await syncDir(this.dir);
    this.walBytes = 0;
    this.compacting = this.writeSnapshot(rows, revision, seq)
      .catch((err: unknown) => this.opts.logger?.warn({ err, dir: this.dir }, 'store compaction failed; the WAL segments are kept'))
      .finally(() => {
        this.compacting = undefined;
      });
  }

  /** The snapshot at `revision`; then deletes segments up to `seq`, which it covers. */
  private async writeSnapshot(rows: [string, number, number, string][], revision: number, seq: number): Promise<void> {
    // The body is exactly JSON.stringify(rows), built and checksummed in slices of about
    // SLICE_BYTES of values, yielding to the event loop between them: slices of a fixed row
    // count took tens of milliseconds each once pod records grew (reconcile latency at scale).
    const SLICE_BYTES = 256 * 1024;
    const parts: Buffer[] = [Buffer.from('[')];
    let crc = crc32(parts[0]!);
    for (let i = 0; i < rows.length;) {
      let end = i;
      for (let bytes = 0; end < rows.length && (end === i || bytes < SLICE_BYTES); end++) bytes += rows[end]![3].length + rows[end]![0].length;
      const text = JSON.stringify(rows.slice(i, end)).slice(1, -1);
      const b = Buffer.from(i === 0 ? text : `,${text}`, 'utf8');
      parts.push(b);
      crc = crc32(b, crc);
      i = end;
      await new Promise<void>((r) => setImmediate(r));
    }
    const close = Buffer.from(']');
    parts.push(close);
    crc = crc32(close, crc);
    const header = Buffer.from(`${JSON.stringify({ format: 1, revision, crc32: crc })}\n`, 'utf8');
    const tmp = join(this.dir, `${SNAPSHOT}.tmp`);
    const fh = await fs.open(tmp, 'w', FILE_MODE);
    let bytes = header.length;
    try {
      await fh.write(header);
      for (const b of parts) {
        await fh.write(b);
        bytes += b.length;
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, join(this.dir, SNAPSHOT));
    await syncDir(this.dir); // the rename is durable before the segments it replaces go
    for (const s of await this.segments()) if (s.seq <= seq) await fs.rm(s.path, { force: true });
    this.snapshotBytes = bytes;
    this.stats.compactions++;
    this.metrics?.compactions.inc();
  }

  watch<T>(prefix: string, opts: { afterRevision?: number; signal: AbortSignal }): AsyncIterable<WatchEvent<T>> {
    this.ensureOpen();
    if (typeof prefix !== 'string') throw new TypeError('prefix must be a string');
    if (!(opts?.signal instanceof AbortSignal)) throw new TypeError('watch opts.signal must be an AbortSignal');
    const after = opts.afterRevision ?? this.committedRev;
    if (after < this.historyFloor) throw new CompactedError(after, this.historyFloor);
    const entry = { prefix, stream: undefined as unknown as WatchStream<unknown> };
    entry.stream = new WatchStream<unknown>(opts.signal, () => this.watchers.delete(entry));
    // Replay and subscribe in the same synchronous step so no committed event falls between.
    for (const rec of this.history) if (rec.r > after && rec.k.startsWith(prefix)) entry.stream.push(toEvent(rec));
    if (!entry.stream.ended) this.watchers.add(entry);
    return entry.stream as WatchStream<T>;
  }

  async campaign(name: string, candidate: string, opts: { ttlSeconds?: number; signal?: AbortSignal } = {}): Promise<Leadership> {
    this.ensureOpen();
    checkKey(name, 'election name');
    checkKey(candidate, 'candidate');
    // The directory lock already makes this process the only writer; among this process's
    // candidates, leadership is a FIFO mutex per name. ttlSeconds has no meaning here.
    let slot = this.elections.get(name);
    if (slot === undefined) this.elections.set(name, (slot = { holder: undefined, waiters: [] }));
    const s = slot;
    if (opts.signal?.aborted) throw opts.signal.reason ?? new Error('campaign aborted');
    if (s.holder !== undefined) {
      await new Promise<void>((resolve, reject) => {
        const waiter = { candidate, resolve, reject, signal: opts.signal };
        s.waiters.push(waiter);
        opts.signal?.addEventListener(
          'abort',
          () => {
            const i = s.waiters.indexOf(waiter);
            if (i >= 0) s.waiters.splice(i, 1);
            reject(opts.signal!.reason ?? new Error('campaign aborted'));
          },
          { once: true },
        );
      });
      // Handed over by resign(): the slot was reserved for us; check nothing ended meanwhile.
      if (this.closedWhy !== undefined || opts.signal?.aborted) {
        this.handOver(s);
        this.ensureOpen();
        throw opts.signal?.reason ?? new Error('campaign aborted');
      }
    }
    const ctl = new AbortController();
    const holder = { candidate, ctl };
    s.holder = holder;
    this.metrics?.leader.set({ election: name }, 1);
    ctl.signal.addEventListener('abort', () => this.metrics?.leader.set({ election: name }, 0), { once: true });
    const leadership: Leadership = {
      candidate,
      signal: ctl.signal,
      resign: async () => {
        if (s.holder !== holder) return;
        ctl.abort(new Error(`${candidate} resigned leadership of ${name}`));
        this.handOver(s);
      },
    };
    // Checked synchronously before a write gets its revision, so it is atomic with the write.
    this.fences.set(leadership, { name, candidate, held: () => s.holder === holder && !ctl.signal.aborted });
    return leadership;
  }

  /** Passes an election slot to the next waiting candidate, or leaves it free. */
  private handOver(s: ElectionSlot): void {
    s.holder = undefined;
    const next = s.waiters.shift();
    if (next !== undefined) {
      s.holder = { candidate: next.candidate, ctl: new AbortController() }; // reserved until it runs
      next.resolve();
    }
  }

  private closing = false;

  /** Ends the store with an error: leaderships are lost, watches end, operations are refused. */
  private fail(why: string): void {
    if (this.closedWhy !== undefined) return;
    this.closedWhy = why;
    this.opts.logger?.warn({ dir: this.dir, why }, 'store failed');
    this.endAll(new StoreClosedError(why));
  }

  private endAll(err: StoreClosedError): void {
    for (const slot of this.elections.values()) {
      slot.holder?.ctl.abort(err);
      slot.holder = undefined;
      for (const w of slot.waiters.splice(0)) w.reject(err);
    }
    for (const w of [...this.watchers]) w.stream.end(err);
    this.wakeReaders();
    this.watchers.clear();
    if (this.lockTimer) clearInterval(this.lockTimer);
  }

  /** Waits for acknowledged-pending writes, then releases the lock. Leaders lose leadership. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const failed = this.closedWhy !== undefined;
    if (!failed) {
      this.closedWhy = 'closed by close()';
      this.endAll(new StoreClosedError(this.closedWhy));
    }
    while (this.flushing) await this.flushDone;
    await this.compacting;
    await this.wal.close().catch(() => undefined);
    if (!failed) await this.lock.release();
  }

  get revision(): number {
    return this.committedRev;
  }
}

function toEvent<T>(rec: Rec): WatchEvent<T> {
  if (rec.o !== 'p') return { type: 'delete', key: rec.k, revision: rec.r };
  // The value is parsed when first read: a watcher that already has this revision (the writer's
  // own cache) skips it without paying for the parse.
  const kv = { key: rec.k, modRevision: rec.r } as { key: string; value: T; modRevision: number };
  let parsed: { v: T } | undefined;
  Object.defineProperty(kv, 'value', {
    enumerable: true,
    get: () => (parsed ??= { v: JSON.parse(rec.v!) as T }).v,
  });
  return { type: 'put', kv, revision: rec.r };
}
