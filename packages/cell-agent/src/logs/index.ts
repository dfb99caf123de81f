// One unit's logs: every instance's stdout and stderr as CRI log files with size-based rotation
// (the previous instance stays readable), a byte-bounded in-memory ring of the newest records,
// and readers that tail, filter and follow.
//
// Why this shape:
// - The writer appends synchronously. A unit's output arrives on the event loop anyway, and a
//   synchronous append to the page cache is cheaper than queueing; it also means the file is
//   always exactly as long as `pos`, so a reader can snapshot a position and never race it.
// - Readers pull from the newest data in the ring, or from the files when they lag, and follow
//   by waiting for the writer's notification (push, no polling). A slow reader therefore never
//   holds the writer back; it only loses data when rotation deleted a file it had not reached,
//   and it is told how many bytes it skipped (LogChunk.droppedBytes).
// - Files are named `INSTANCE-SEGMENT.log` and never renamed, so a reader's notion of "the file
//   holding offset X" stays valid across rotation.
import { closeSync, mkdirSync, openSync, readdirSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { LogStream, type LogChunk, type LogEntry, type LogsRequest } from '@cello/proto/cell';
import type { LogSink, StdStream } from '../units/unit-view.js';
import { formatRfc3339Nano, nowNs, splitNs } from './clock.js';
import { CriParser, NEWLINE, PACKED_PARTIAL, PACKED_STDERR, PackedBuilder, contentOffset, packedTextPieces, type PackedRun, type ParsedRecord } from './cri.js';

export interface ContainerLogsOptions {
  /** Directory of this unit's log files (created if missing). */
  dir: string;
  /** Rotate the current file once it reaches this size. Default 10 MiB. */
  maxFileBytes?: number;
  /** Files kept per instance, the current one included. Default 5. */
  maxFiles?: number;
  /**
   * Newest output of the current instance kept in memory for readers (runs of whole lines as
   * the unit wrote them, other records as CRI records). Default 8 MiB: a follower that falls out of the
   * ring reads files and parses every record, so the ring should cover a burst of output.
   */
  ringBytes?: number;
  /** Longer lines are split into partial (P) records of this size. Default 16 KiB, like CRI. */
  maxLineBytes?: number;
}

/** A request the caller got wrong or that names something that does not exist. */
export class LogsError extends Error {
  constructor(
    readonly code: 'NOT_FOUND' | 'INVALID_ARGUMENT',
    message: string,
  ) {
    super(message);
    this.name = 'LogsError';
  }
}

interface Segment {
  index: number;
  path: string;
  /** Offset of the segment's first byte in the instance's byte space. */
  start: number;
  size: number;
}

interface RingChunk {
  start: number;
  /** Length in the instance's byte space (its CRI records). */
  len: number;
  /** The CRI records; absent for a run, whose records are rebuilt from it when asked for. */
  buf: Buffer | undefined;
  /** The same lines ready for packed readers, when the chunk is one run (see write). */
  run: PackedRun | undefined;
  /** The header of each of the run's records. */
  head: Buffer | undefined;
  /** Memory it holds. */
  size: number;
}

/** One piece of a read: its length, its prepared run if whole, and its CRI bytes on demand. */
export interface ReadPiece {
  len: number;
  run: PackedRun | undefined;
  cri(): Buffer;
}

/** A run's CRI records: the header before each of its lines. */
function rebuildCri(run: PackedRun, head: Buffer, len: number): Buffer {
  const out = Buffer.allocUnsafe(len);
  const t = run.text;
  let pos = 0;
  for (let ls = 0; ls < t.length; ) {
    let nl = t.indexOf(NEWLINE, ls);
    if (nl === -1) nl = t.length - 1;
    out.set(head, pos);
    pos += head.length;
    pos += t.copy(out, pos, ls, nl + 1);
    ls = nl + 1;
  }
  return out;
}

function pieceOf(c: RingChunk, from: number): ReadPiece {
  const whole = from === 0;
  return {
    len: c.len - from,
    run: whole ? c.run : undefined,
    cri: () => {
      const b = c.buf ?? rebuildCri(c.run!, c.head!, c.len);
      return whole ? b : b.subarray(from);
    },
  };
}

const READ_BYTES = 1 << 20;
/** At most this much output is let in before a waiting follower reads (see settle). */
const BATCH_BYTES = 256 * 1024;
const NL = Buffer.from([NEWLINE]);
const BACKWARD_BLOCK = 64 * 1024;

/** One run of the unit: a byte space of CRI records spread over segment files. */
class Instance {
  readonly segments: Segment[] = [];
  pos = 0;
  ended = false;
  private fd: number | undefined;
  private ring: RingChunk[] = [];
  private ringSize = 0;
  private waiters = new Set<() => void>();
  private partial: Record<StdStream, Buffer[]> = { stdout: [], stderr: [] };
  private partialLen: Record<StdStream, number> = { stdout: 0, stderr: 0 };
  /** Scratch for write(): the CRI records of a run, on their way to the file. */
  private scratchOut = Buffer.allocUnsafe(64 * 1024);
  /** Scratch for write(): where the newlines of a chunk are. */
  private newlines = new Int32Array(1024);

  constructor(
    readonly id: number,
    private readonly dir: string,
    private readonly opts: Required<Omit<ContainerLogsOptions, 'dir'>>,
  ) {}

  static recovered(id: number, dir: string, opts: Required<Omit<ContainerLogsOptions, 'dir'>>, segs: number[]): Instance {
    const inst = new Instance(id, dir, opts);
    for (const index of segs.sort((a, b) => a - b)) {
      const path = join(dir, `${id}-${index}.log`);
      const size = statSync(path).size;
      inst.segments.push({ index, path, start: inst.pos, size });
      inst.pos += size;
    }
    inst.ended = true;
    return inst;
  }

  // ---- writer ----

  write(stream: StdStream, chunk: Buffer): void {
    if (this.ended || chunk.length === 0) return;
    const { seconds, nanos } = splitNs(nowNs());
    const ts = formatRfc3339Nano(seconds, nanos);
    // One timestamp per chunk: the lines of one read arrived together.
    const headF = Buffer.from(`${ts} ${stream} F `, 'latin1');
    const headP = Buffer.from(`${ts} ${stream} P `, 'latin1');
    const max = this.opts.maxLineBytes;
    // Records that go out as plain CRI bytes (held lines, long lines, partial pieces); the
    // common run of whole lines goes out with its packed form (see RingChunk.run).
    let parts: Buffer[] = [];
    let start = 0;
    // A line held from the previous chunk completes (or grows) first.
    if (this.partialLen[stream] > 0) {
      const i = chunk.indexOf(NEWLINE);
      const piece = i === -1 ? chunk : chunk.subarray(0, i);
      this.partial[stream].push(Buffer.from(piece));
      this.partialLen[stream] += piece.length;
      if (i === -1) {
        this.flushHeld(stream, headP, parts);
        if (parts.length > 0) this.append(Buffer.concat(parts), undefined);
        return;
      }
      const line = Buffer.concat(this.partial[stream]);
      this.partial[stream] = [];
      this.partialLen[stream] = 0;
      let c = line;
      while (c.length > max) {
        parts.push(headP, c.subarray(0, max), NL);
        c = c.subarray(max);
      }
      parts.push(headF, c, NL);
      start = i + 1;
    }
    // The common case, on the hot path: whole lines of at most `max` bytes. Each record is the
    // header plus the line with its newline, copied as one run from the chunk into one buffer.
    const last = chunk.lastIndexOf(NEWLINE);
    if (last >= start) {
      // Newline positions, found once (the count sizes the output, the positions cut it).
      let lines = 0;
      let nls = this.newlines;
      for (let i = chunk.indexOf(NEWLINE, start); i !== -1 && i <= last; i = chunk.indexOf(NEWLINE, i + 1)) {
        if (lines === nls.length) {
          const grown = new Int32Array(nls.length * 2);
          grown.set(nls);
          nls = this.newlines = grown;
        }
        nls[lines++] = i;
      }
      const hl = headF.length;
      // The records only go to the file (the ring keeps the run and rebuilds them on demand):
      // a reused buffer, not one more allocation per write.
      const need = last + 1 - start + lines * hl;
      if (this.scratchOut.length < need) this.scratchOut = Buffer.allocUnsafe(Math.max(need, 2 * this.scratchOut.length));
      const out = this.scratchOut;
      let pos = 0;
      let long = false;
      let covered = 0;
      const runStart = start;
      for (let k = 0, ls = start; k < lines; k++) {
        const nl = nls[k]!;
        if (nl - ls > max) {
          long = true;
          break;
        }
        out.set(headF, pos);
        pos += hl;
        pos += chunk.copy(out, pos, ls, nl + 1);
        ls = nl + 1;
        start = ls;
        covered += 1;
      }
      if (parts.length > 0) {
        this.append(parts.length === 1 ? parts[0]! : Buffer.concat(parts), undefined);
        parts = [];
      }
      if (covered > 0) {
        // The packed form is the raw lines themselves, kept as they came (LogSink.write hands
        // the chunk over): no copy at all.
        const text = chunk.subarray(runStart, start);
        this.append(out.subarray(0, pos), { text, lines: covered, flags: stream === 'stderr' ? PACKED_STDERR : 0, seconds, nanos }, headF);
      }
      if (long) {
        // Rare: lines longer than `max` become P records followed by an F record.
        for (let nl = chunk.indexOf(NEWLINE, start); nl !== -1 && nl <= last; nl = chunk.indexOf(NEWLINE, start)) {
          let c = chunk.subarray(start, nl);
          while (c.length > max) {
            parts.push(headP, c.subarray(0, max), NL);
            c = c.subarray(max);
          }
          parts.push(headF, c, NL);
          start = nl + 1;
        }
      }
    }
    if (start < chunk.length) {
      // Copy: the caller may reuse its buffer.
      const rest = Buffer.from(chunk.subarray(start));
      this.partial[stream].push(rest);
      this.partialLen[stream] += rest.length;
      this.flushHeld(stream, headP, parts);
    }
    if (parts.length > 0) this.append(parts.length === 1 ? parts[0]! : Buffer.concat(parts), undefined);
  }

  /** A held partial line that reached `maxLineBytes` goes out as P records. */
  private flushHeld(stream: StdStream, headP: Buffer, parts: Buffer[]): void {
    const max = this.opts.maxLineBytes;
    if (this.partialLen[stream] < max) return;
    let held = Buffer.concat(this.partial[stream]);
    while (held.length >= max) {
      parts.push(headP, held.subarray(0, max), NL);
      held = held.subarray(max);
    }
    this.partial[stream] = held.length > 0 ? [held] : [];
    this.partialLen[stream] = held.length;
  }

  end(): void {
    if (this.ended) return;
    const { seconds, nanos } = splitNs(nowNs());
    const ts = formatRfc3339Nano(seconds, nanos);
    const parts: Buffer[] = [];
    for (const stream of ['stdout', 'stderr'] as const) {
      if (this.partialLen[stream] === 0) continue;
      // A last line without newline stays partial: the reader can tell it was never finished.
      parts.push(Buffer.from(`${ts} ${stream} P `, 'latin1'), ...this.partial[stream], Buffer.from([NEWLINE]));
      this.partial[stream] = [];
      this.partialLen[stream] = 0;
    }
    if (parts.length > 0) this.append(Buffer.concat(parts), undefined);
    this.ended = true;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.ring = [];
    this.ringSize = 0;
    this.notify();
  }

  /** Appends CRI records; with `run` (and its `head`), `buf` is not kept (it may be scratch). */
  private append(buf: Buffer, run: PackedRun | undefined, head?: Buffer): void {
    let seg = this.segments[this.segments.length - 1];
    if (seg === undefined || this.fd === undefined || (seg.size > 0 && seg.size + buf.length > this.opts.maxFileBytes)) {
      seg = this.rotate();
    }
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd!, buf, off, buf.length - off);
    const keep = run === undefined || head === undefined;
    const size = keep ? buf.length : run.text.length + head.length;
    this.ring.push({ start: this.pos, len: buf.length, buf: keep ? buf : undefined, run, head, size });
    this.ringSize += size;
    while (this.ring.length > 1 && this.ringSize - this.ring[0]!.size >= this.opts.ringBytes) {
      this.ringSize -= this.ring.shift()!.size;
    }
    seg.size += buf.length;
    this.pos += buf.length;
    this.notify();
  }

  private rotate(): Segment {
    if (this.fd !== undefined) closeSync(this.fd);
    const last = this.segments[this.segments.length - 1];
    const index = last === undefined ? 0 : last.index + 1;
    const path = join(this.dir, `${this.id}-${index}.log`);
    this.fd = openSync(path, 'w', 0o640);
    const seg = { index, path, start: this.pos, size: 0 };
    this.segments.push(seg);
    while (this.segments.length > this.opts.maxFiles) {
      const old = this.segments.shift()!;
      try {
        unlinkSync(old.path);
      } catch {
        /* already gone */
      }
    }
    return seg;
  }

  private notify(): void {
    const ws = this.waiters;
    this.waiters = new Set();
    for (const w of ws) w();
  }

  /** Resolves at the end of this loop turn (or after `lingerMs`, when given), or as soon as
   * `target` bytes are there, or at the end (or when aborted), whichever comes first. */
  settle(target: number, signal: AbortSignal, lingerMs = 0): Promise<void> {
    return new Promise((resolve) => {
      if (this.pos >= target || this.ended || signal.aborted) return resolve();
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        if (lingerMs > 0) clearTimeout(timer as NodeJS.Timeout);
        else clearImmediate(timer as NodeJS.Immediate);
        this.waiters.delete(check);
        signal.removeEventListener('abort', finish);
        resolve();
      };
      const check = () => {
        if (this.pos >= target || this.ended) finish();
        else this.waiters.add(check);
      };
      const timer = lingerMs > 0 ? setTimeout(finish, lingerMs) : setImmediate(finish);
      this.waiters.add(check);
      signal.addEventListener('abort', finish, { once: true });
    });
  }

  /** Resolves at the next write or end (or when aborted). */
  changed(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const done = () => {
        signal.removeEventListener('abort', done);
        this.waiters.delete(done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  deleteFiles(): void {
    for (const s of this.segments) {
      try {
        unlinkSync(s.path);
      } catch {
        /* already gone */
      }
    }
  }

  // ---- reader side ----

  /** The oldest offset still readable. */
  firstOffset(): number {
    return this.segments[0]?.start ?? this.pos;
  }

  /**
   * Up to `max` bytes starting at `offset` (clamped to what is still kept), as whole ring
   * chunks or a file read. `skipped` says how far `offset` had to move forward because the data
   * there was rotated away.
   */
  async readAt(offset: number, max: number): Promise<{ buf: Buffer; skipped: number }> {
    const { pieces, skipped } = await this.readChunksAt(offset, max);
    const bufs = pieces.map((p) => p.cri());
    return { buf: bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs), skipped };
  }

  /**
   * Like readAt, but ring data comes as the ring's own chunks (each holds whole records), so
   * a follower that keeps up reads without copying. Empty `bufs` means nothing to read.
   */
  async readChunksAt(offset: number, max: number): Promise<{ pieces: ReadPiece[]; skipped: number }> {
    for (;;) {
      let skipped = 0;
      const first = this.firstOffset();
      if (offset < first) {
        skipped = first - offset;
        offset = first;
      }
      if (offset >= this.pos) return { pieces: [], skipped };
      const ring = this.ring;
      const ringStart = ring[0]?.start;
      if (ringStart !== undefined && offset >= ringStart) {
        // The last chunk starting at or before offset (binary search: small writes make
        // thousands of chunks).
        let lo = 0;
        let hi = ring.length - 1;
        while (lo < hi) {
          const mid = (lo + hi + 1) >> 1;
          if (ring[mid]!.start <= offset) lo = mid;
          else hi = mid - 1;
        }
        const pieces: ReadPiece[] = [];
        let n = 0;
        for (let i = lo; i < ring.length && n < max; i++) {
          const c = ring[i]!;
          const from = Math.max(0, offset - c.start);
          if (from >= c.len) continue;
          pieces.push(pieceOf(c, from));
          n += c.len - from;
        }
        return { pieces, skipped };
      }
      // The segment holding `offset`, or the next one when the data there is gone.
      const seg = this.segments.find((s) => offset < s.start + s.size);
      if (seg === undefined) return { pieces: [], skipped: skipped + (this.pos - offset) };
      if (seg.start > offset) {
        skipped += seg.start - offset;
        offset = seg.start;
      }
      // Stop where the ring begins: from there on the reader gets ring chunks, whole (packed
      // readers then take their prepared runs instead of parsing every record).
      const want = Math.min(max, seg.start + seg.size - offset, ringStart !== undefined && ringStart > offset ? ringStart - offset : Infinity);
      let fh;
      try {
        fh = await open(seg.path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        // Deleted by rotation (the list moved on: recompute) or from under us (the instance was
        // dropped, or someone cleaned the directory): forget it, so the data counts as skipped.
        const i = this.segments.indexOf(seg);
        if (i !== -1) this.segments.splice(i, 1);
        continue;
        throw err;
      }
      try {
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fh.read(buf, 0, want, offset - seg.start);
        const got = buf.subarray(0, bytesRead);
        return { pieces: bytesRead > 0 ? [{ len: bytesRead, run: undefined, cri: () => got }] : [], skipped };
      } finally {
        await fh.close();
      }
    }
  }

  /**
   * Start offset for a tail of at most `lines` records and at most `bytes` content bytes from
   * the end. Scans backwards block by block, so a short tail of a long log reads little.
   * Returns the offset and, when the byte limit cuts into a record, how many content bytes of
   * that first record to drop.
   */
  async tailStart(lines: number | undefined, bytes: number | undefined): Promise<{ offset: number; cutFirst: number }> {
    const lo = this.firstOffset();
    // buf holds [bufStart, bufStart + buf.length): bytes before the records counted so far.
    let buf: Buffer = Buffer.alloc(0);
    let bufStart = this.pos;
    let count = 0;
    let content = 0;
    for (;;) {
      while (buf.length > 0) {
        // The record ending at buf's end starts after the previous newline (or at `lo`).
        const nl = buf.length >= 2 ? buf.lastIndexOf(NEWLINE, buf.length - 2) : -1;
        if (nl === -1 && bufStart > lo) break; // starts in an earlier block
        const recStart = nl + 1;
        // Bytes as printed: the content, plus a newline unless the record is partial.
        const head = contentOffset(buf, recStart);
        const len = buf.length - recStart - head - 1 + (buf[recStart + head - 2] === 0x46 /* F */ ? 1 : 0);
        const recEnd = bufStart + buf.length;
        if (lines !== undefined && count + 1 > lines) return { offset: recEnd, cutFirst: 0 };
        if (bytes !== undefined && content + len > bytes) {
          const keep = bytes - content;
          if (keep <= len - (buf.length - recStart - head - 1)) return { offset: recEnd, cutFirst: 0 };
          return { offset: bufStart + recStart, cutFirst: len - keep };
        }
        count += 1;
        content += len;
        buf = buf.subarray(0, recStart);
      }
      if (bufStart <= lo) return { offset: lo, cutFirst: 0 };
      const from = Math.max(lo, bufStart - BACKWARD_BLOCK);
      const block = await this.readRange(from, bufStart);
      buf = buf.length > 0 ? Buffer.concat([block, buf]) : block;
      bufStart = from;
    }
  }

  private async readRange(from: number, to: number): Promise<Buffer> {
    const bufs: Buffer[] = [];
    let off = from;
    while (off < to) {
      const { buf, skipped } = await this.readAt(off, to - off);
      if (skipped > 0 || buf.length === 0) throw new Error('log data rotated away while reading the tail');
      const piece = buf.subarray(0, to - off);
      bufs.push(piece);
      off += piece.length;
    }
    return Buffer.concat(bufs);
  }
}

/** The logs of one unit across its instances (current and previous). */
export class ContainerLogs {
  private readonly opts: Required<Omit<ContainerLogsOptions, 'dir'>>;
  private readonly dir: string;
  private current: Instance | undefined;
  private previous: Instance | undefined;
  private closed = false;

  constructor(opts: ContainerLogsOptions) {
    this.dir = opts.dir;
    this.opts = {
      maxFileBytes: opts.maxFileBytes ?? 10 * 1024 * 1024,
      maxFiles: opts.maxFiles ?? 5,
      ringBytes: opts.ringBytes ?? 8 * 1024 * 1024,
      maxLineBytes: opts.maxLineBytes ?? 16 * 1024,
    };
    if (!(this.opts.maxFileBytes > 0)) throw new LogsError('INVALID_ARGUMENT', 'maxFileBytes must be positive');
    if (!(this.opts.maxFiles >= 1)) throw new LogsError('INVALID_ARGUMENT', 'maxFiles must be at least 1');
    if (!(this.opts.maxLineBytes > 0)) throw new LogsError('INVALID_ARGUMENT', 'maxLineBytes must be positive');
    mkdirSync(this.dir, { recursive: true });
    // Re-adopt what an earlier agent process left: the newest instance is "current" (ended,
    // readable), the one before it "previous". Anything older is no longer reachable.
    const byInstance = new Map<number, number[]>();
    for (const name of readdirSync(this.dir)) {
      const m = /^(\d+)-(\d+)\.log$/.exec(name);
      if (m === null) continue;
      const id = Number(m[1]);
      byInstance.set(id, [...(byInstance.get(id) ?? []), Number(m[2])]);
    }
    const ids = [...byInstance.keys()].sort((a, b) => a - b);
    for (const id of ids.slice(0, -2)) {
      for (const seg of byInstance.get(id)!) unlinkSync(join(this.dir, `${id}-${seg}.log`));
    }
    const [prevId, curId] = ids.length >= 2 ? ids.slice(-2) : [undefined, ids[0]];
    if (prevId !== undefined) this.previous = Instance.recovered(prevId, this.dir, this.opts, byInstance.get(prevId)!);
    if (curId !== undefined) this.current = Instance.recovered(curId, this.dir, this.opts, byInstance.get(curId)!);
  }

  /** A new run of the unit begins: the current one (ended or not) becomes the previous. */
  startInstance(): LogSink {
    if (this.closed) throw new Error('ContainerLogs is closed');
    const old = this.current;
    if (old !== undefined) {
      old.end();
      this.previous?.deleteFiles();
      this.previous = old;
    }
    const inst = new Instance((old?.id ?? -1) + 1, this.dir, this.opts);
    this.current = inst;
    return {
      write: (stream, chunk) => inst.write(stream, chunk),
      end: () => inst.end(),
    };
  }

  /** Ends the current instance (followers finish) and stops accepting output. Files stay. */
  close(): void {
    this.closed = true;
    this.current?.end();
  }

  /**
   * Reads per the request: tail by lines and/or content bytes, since a time, the previous
   * instance, and follow (until the instance ends or `signal` aborts). Each yielded chunk holds
   * whole records; `droppedBytes` is set when data this reader had not yet read was rotated away.
   */
  async *read(req: LogsRequest, signal: AbortSignal): AsyncIterable<LogChunk> {
    if (req.tailLines !== undefined && req.tailLines < 0) throw new LogsError('INVALID_ARGUMENT', 'tail_lines must not be negative');
    if (req.limitBytes !== undefined && req.limitBytes < 0) throw new LogsError('INVALID_ARGUMENT', 'limit_bytes must not be negative');
    if (req.sinceSeconds !== undefined && req.sinceSeconds < 0) throw new LogsError('INVALID_ARGUMENT', 'since_seconds must not be negative');
    const inst = req.previous ? this.previous : this.current;
    if (inst === undefined) {
      if (req.previous) throw new LogsError('NOT_FOUND', 'previous terminated instance not found');
      return; // never started: no logs yet
    }
    const follow = req.follow && !req.previous;
    let sinceNs: bigint | undefined;
    if (req.sinceTime !== undefined) sinceNs = BigInt(req.sinceTime.getTime()) * 1_000_000n;
    if (req.sinceSeconds !== undefined) {
      const s = nowNs() - BigInt(req.sinceSeconds) * 1_000_000_000n;
      if (sinceNs === undefined || s > sinceNs) sinceNs = s;
    }
    let offset: number;
    let cutFirst = 0;
    if (req.tailLines !== undefined || req.limitBytes !== undefined) {
      ({ offset, cutFirst } = await inst.tailStart(req.tailLines, req.limitBytes));
    } else {
      offset = inst.firstOffset();
    }
    let parser = new CriParser();
    let dropped = 0;
    let lastSent = -Infinity;
    let lastSize = 0;
    const render = new TextRenderer(true);
    const packed = req.packed;
    for (;;) {
      if (signal.aborted) return;
      const { pieces, skipped } = await inst.readChunksAt(offset, READ_BYTES);
      if (skipped > 0) {
        // Whatever partial record the parser held belongs to data that is gone.
        dropped += skipped;
        offset += skipped;
        parser = new CriParser();
      }
      if (pieces.length === 0) {
        if (dropped > 0) {
          yield logChunk({ droppedBytes: dropped });
          dropped = 0;
        }
        if (!follow || inst.ended || this.closed) {
          if (offset >= inst.pos) return;
          continue;
        }
        await inst.changed(signal);
        // A unit that writes in small pieces would cost one message per piece: let the rest of
        // this loop turn's output land first, but only up to a small budget: a fast writer
        // delivers many reads per turn, and a reader that waited for all of them fell out of
        // the ring (and behind). When the last message was a pipe page or more and went out
        // under a millisecond ago, the unit is streaming: linger up to a millisecond for more.
        // Its pieces otherwise each became a message whenever the agent kept up with it (awk's
        // 4 KiB writes: twice the CPU per MB in the client, 45% of the raw pipe rate instead of
        // 70%), while a line after a pause, or lines written one by one, still go out at once.
        const steady = lastSize >= 4096 && performance.now() - lastSent < 1;
        await inst.settle(offset + Math.min(BATCH_BYTES, this.opts.ringBytes / 8), signal, steady ? 1 : 0);
        continue;
      }
      let size = 0;
      for (const p of pieces) size += p.len;
      offset += size;
      if (packed) {
        const since = sinceNs;
        const keep = since === undefined ? undefined : (sec: number, ns: number) => BigInt(sec) * 1_000_000_000n + BigInt(ns) >= since;
        const out = new PackedBuilder(size);
        for (const p of pieces) {
          const run = p.run;
          // A chunk the capture prepared goes out whole, without looking at its lines (the
          // parser holds nothing then: ring chunks are whole records).
          if (run !== undefined && cutFirst === 0 && parser.idle) {
            if (keep === undefined || keep(run.seconds, run.nanos)) out.addRun(run);
          } else cutFirst = parser.pushPacked(p.cri(), out, keep, cutFirst);
        }
        if (sinceNs !== undefined && !out.empty) sinceNs = undefined; // timestamps only grow
        if (out.empty && dropped === 0) continue;
        const chunk = packedChunk(out, dropped);
        if (req.timestamps) chunk.text = render.text(unpackLogChunk(chunk));
        lastSent = performance.now();
        lastSize = size;
        yield chunk;
        dropped = 0;
        continue;
      }
      const recs: ParsedRecord[] = [];
      for (const p of pieces) parser.push(p.cri(), recs);
      let entries: LogEntry[] = recs;
      if (cutFirst > 0 && recs.length > 0) {
        recs[0]!.line = recs[0]!.line.subarray(cutFirst);
        cutFirst = 0;
      }
      if (sinceNs !== undefined) {
        const since = sinceNs;
        entries = recs.filter((r) => BigInt(r.timeSeconds) * 1_000_000_000n + BigInt(r.timeNanos) >= since);
        if (entries.length === recs.length) sinceNs = undefined; // timestamps only grow
      }
      if (entries.length === 0 && dropped === 0) continue;
      lastSent = performance.now();
      lastSize = size;
      yield logChunk({
        entries,
        droppedBytes: dropped,
        text: req.timestamps ? render.text(entries) : Buffer.alloc(0),
      });
      dropped = 0;
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** A LogChunk with defaults for what `c` leaves out. (Not LogChunk.fromPartial: that copies
 * every entry and array, per chunk, on the hot path.) */
function logChunk(c: Partial<LogChunk>): LogChunk {
  return {
    entries: [],
    droppedBytes: 0,
    text: EMPTY,
    packedText: EMPTY,
    packedRunBytes: [],
    packedRunLines: [],
    packedRunFlags: [],
    packedBaseSeconds: 0,
    packedRunSeconds: [],
    packedRunNanos: [],
    ...c,
  };
}

function packedChunk(b: PackedBuilder, dropped: number): LogChunk {
  let base = 0;
  if (b.runSeconds.length > 0) {
    base = b.runSeconds[0]!;
    for (const s of b.runSeconds) if (s < base) base = s;
  }
  const pieces = b.pieces();
  const chunk = logChunk({
    droppedBytes: dropped,
    packedRunBytes: b.runBytes,
    packedRunLines: b.runLines,
    packedRunFlags: b.runFlags,
    packedBaseSeconds: base,
    packedRunSeconds: base === 0 ? b.runSeconds : b.runSeconds.map((s) => s - base),
    packedRunNanos: b.runNanos,
  });
  if (pieces.length === 1) chunk.packedText = pieces[0]!;
  else if (pieces.length > 1) {
    // Joined only if someone reads packedText; the serializer gathers the pieces straight
    // into the message instead (one copy less, one large allocation less per chunk).
    packedTextPieces.set(chunk, pieces);
    let joined: Buffer | undefined;
    Object.defineProperty(chunk, 'packedText', {
      enumerable: true,
      configurable: true,
      get: () => (joined ??= Buffer.concat(pieces)),
      set: (v: Buffer) => {
        packedTextPieces.delete(chunk);
        joined = v;
      },
    });
  }
  return chunk;
}

/** The entries of a chunk in either form (LogsRequest.packed or not), in order. */
export function unpackLogChunk(c: LogChunk): LogEntry[] {
  if (c.packedRunBytes.length === 0) return c.entries;
  const out: LogEntry[] = [];
  const t = c.packedText;
  let pos = 0;
  for (let r = 0; r < c.packedRunBytes.length; r++) {
    const flags = c.packedRunFlags[r] ?? 0;
    const stream = flags & PACKED_STDERR ? LogStream.LOG_STREAM_STDERR : LogStream.LOG_STREAM_STDOUT;
    const timeSeconds = c.packedBaseSeconds + (c.packedRunSeconds[r] ?? 0);
    const timeNanos = c.packedRunNanos[r] ?? 0;
    const end = pos + c.packedRunBytes[r]!;
    if (flags & PACKED_PARTIAL) {
      out.push({ stream, timeSeconds, timeNanos, line: t.subarray(pos, end), partial: true });
    } else {
      for (let nl = t.indexOf(NEWLINE, pos); nl !== -1 && nl < end; nl = t.indexOf(NEWLINE, pos)) {
        out.push({ stream, timeSeconds, timeNanos, line: t.subarray(pos, nl), partial: false });
        pos = nl + 1;
      }
    }
    pos = end;
  }
  return out;
}

/** Text as `kubectl logs` prints it: a partial record continues on the same line. */
export class TextRenderer {
  private atLineStart = true;
  constructor(private readonly timestamps: boolean) {}

  /** The text of a chunk in either form. */
  chunk(c: LogChunk): Buffer {
    if (c.packedRunBytes.length === 0 || this.timestamps) return this.text(unpackLogChunk(c));
    // Packed, no timestamps: the packed text is exactly what is printed.
    this.atLineStart = ((c.packedRunFlags.at(-1) ?? 0) & PACKED_PARTIAL) === 0;
    return c.packedText;
  }

  text(entries: LogEntry[]): Buffer {
    const parts: Buffer[] = [];
    for (const e of entries) {
      if (this.timestamps && this.atLineStart) parts.push(Buffer.from(`${formatRfc3339Nano(e.timeSeconds, e.timeNanos)} `));
      parts.push(e.line);
      if (!e.partial) parts.push(NL);
      this.atLineStart = !e.partial;
    }
    return Buffer.concat(parts);
  }
}
