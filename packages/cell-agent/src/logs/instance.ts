// One run of a unit: a byte space of CRI records spread over segment files (rotated by size,
// never renamed) with the newest records also in a ring. The writer turns the unit's output into
// records and appends them synchronously; readers read at an offset, wait for more, and find
// where a tail starts.
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { StdStream } from '../units/unit-view.js';
import { formatRfc3339Nano, nowNs, splitNs } from './clock.js';
import { NEWLINE, PACKED_STDERR, contentOffset, type PackedRun } from './cri.js';
import type { LogLimits } from './options.js';
import { LogRing, type ReadPiece } from './ring.js';

export interface Segment {
  index: number;
  path: string;
  /** Offset of the segment's first byte in the instance's byte space. */
  start: number;
  size: number;
}

const NL = Buffer.from([NEWLINE]);
const BACKWARD_BLOCK = 64 * 1024;

/** One run of the unit: a byte space of CRI records spread over segment files. */
export class LogInstance {
  readonly segments: Segment[] = [];
  pos = 0;
  ended = false;
  private fd: number | undefined;
  private readonly ring: LogRing;
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
    private readonly opts: LogLimits,
  ) {
    this.ring = new LogRing(opts.ringBytes);
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
    this.ring.clear();
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
    this.ring.add(this.pos, buf, run, head);
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
      const ringStart = this.ring.start;
      if (ringStart !== undefined && offset >= ringStart) return { pieces: this.ring.piecesFrom(offset, max), skipped };
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
