// The CRI log file format: one record per line, `TIMESTAMP STREAM TAG CONTENT\n`, where TAG is
// F (full line) or P (partial: the line continues in the next record of the same stream).
import type { LogEntry } from '@cello/proto/cell';
import { LogStream } from '@cello/proto/cell';

const SPACE = 0x20;
export const NEWLINE = 0x0a;

export interface ParsedRecord extends LogEntry {
  /** Raw bytes this record occupies in the file, including its newline. */
  rawBytes: number;
}

/** Parses the seconds part of an RFC 3339 timestamp, with a one-entry cache (most neighbouring
 * records share their second, and Date.parse is the expensive part). */
class TimestampParser {
  private lastKey = '';
  private lastSeconds = 0;

  parse(text: string): { seconds: number; nanos: number } {
    // 2026-11-22T01:49:19.123456789Z (fraction of any length, or none)
    const key = text.slice(0, 19);
    if (key !== this.lastKey) {
      const ms = Date.parse(`${key}Z`);
      if (Number.isNaN(ms)) throw new Error(`bad CRI timestamp ${JSON.stringify(text)}`);
      this.lastKey = key;
      this.lastSeconds = ms / 1000;
    }
    let nanos = 0;
    if (text.charCodeAt(19) === 0x2e /* . */) {
      const frac = text.slice(20, text.length - 1);
      nanos = Number(frac.padEnd(9, '0').slice(0, 9));
    }
    return { seconds: this.lastSeconds, nanos };
  }
}

/**
 * Splits a byte stream of CRI records into entries. Feed it buffers that start at a record
 * boundary; an incomplete record at the end is kept for the next call.
 */
export class CriParser {
  private carry: Buffer | undefined;

  /** True when no incomplete record is held. */
  get idle(): boolean {
    return this.carry === undefined;
  }
  private readonly ts = new TimestampParser();

  push(buf: Buffer, out: ParsedRecord[]): void {
    const data = this.withCarry(buf);
    let pos = 0;
    for (;;) {
      const nl = data.indexOf(NEWLINE, pos);
      if (nl === -1) break;
      out.push(this.parseRecord(data, pos, nl));
      pos = nl + 1;
    }
    this.keepRest(data, pos);
  }

  /**
   * Like push, into a PackedBuilder. `keep(seconds, nanos)` filters records by time (since);
   * `cutFirst` drops that many content bytes of the first record (a byte-limited tail); returns
   * what is left of it for the next call (0 once a record went by).
   */
  pushPacked(buf: Buffer, out: PackedBuilder, keep?: (seconds: number, nanos: number) => boolean, cutFirst = 0): number {
    const data = this.withCarry(buf);
    let pos = 0;
    for (;;) {
      const nl = data.indexOf(NEWLINE, pos);
      if (nl === -1) break;
      // Our own writer's header is fixed-width (30-byte timestamp, "stdout"/"stderr", tag):
      // check its spaces where they must be; anything else takes the general parser.
      let s1 = pos + 30;
      let tag: number;
      let contentStart: number;
      if (data[s1] === SPACE && data[pos + 37] === SPACE && data[pos + 39] === SPACE && nl >= pos + 39) {
        tag = data[pos + 38]!;
        contentStart = Math.min(pos + 40, nl);
      } else {
        s1 = data.indexOf(SPACE, pos);
        const s2 = s1 === -1 ? -1 : data.indexOf(SPACE, s1 + 1);
        const s3 = s2 === -1 ? -1 : s2 + 2;
        if (s1 === -1 || s2 === -1 || s3 > nl || (data[s3] !== SPACE && s3 !== nl)) {
          throw new Error(`malformed CRI log record: ${JSON.stringify(data.toString('utf8', pos, Math.min(nl, pos + 80)))}`);
        }
        tag = data[s2 + 1]!;
        contentStart = Math.min(s3 + 1, nl);
      }
      this.timestampOf(data, pos, s1);
      if (keep === undefined || keep(this.lastSeconds, this.lastNanos)) {
        const flags = (data[s1 + 4] === 0x65 /* stdErr */ ? PACKED_STDERR : 0) | (tag === 0x50 /* P */ ? PACKED_PARTIAL : 0);
        out.addLine(data, Math.min(contentStart + cutFirst, nl), nl, flags, this.lastSeconds, this.lastNanos);
      }
      cutFirst = 0;
      pos = nl + 1;
    }
    this.keepRest(data, pos);
    return cutFirst;
  }

  /** `buf` behind the incomplete record the previous call kept, if any. */
  private withCarry(buf: Buffer): Buffer {
    const carry = this.carry;
    if (carry === undefined) return buf;
    this.carry = undefined;
    return Buffer.concat([carry, buf]);
  }

  /** Keeps data[pos..] (an incomplete record) for the next call, copied: `data` may be reused. */
  private keepRest(data: Buffer, pos: number): void {
    if (pos < data.length) this.carry = Buffer.from(data.subarray(pos));
  }

  /** Sets lastSeconds/lastNanos from the timestamp in data[start, end). */
  private timestampOf(data: Buffer, start: number, end: number): void {
    const last = this.lastTs;
    const len = end - start;
    if (last !== undefined && last.length === len) {
      // Neighbouring records mostly share their timestamp (one per write); the fraction
      // differs first, so compare from the end.
      let i = len - 1;
      while (i >= 0 && data[start + i] === last[i]) i--;
      if (i < 0) return;
    }
    const t = this.ts.parse(data.toString('latin1', start, end));
    this.lastTs = Buffer.from(data.subarray(start, end));
    this.lastSeconds = t.seconds;
    this.lastNanos = t.nanos;
  }

  private lastTs: Buffer | undefined;
  private lastSeconds = 0;
  private lastNanos = 0;

  private parseRecord(data: Buffer, start: number, nl: number): ParsedRecord {
    const s1 = data.indexOf(SPACE, start);
    const s2 = s1 === -1 ? -1 : data.indexOf(SPACE, s1 + 1);
    const s3 = s2 === -1 ? -1 : s2 + 2;
    if (s1 === -1 || s2 === -1 || s3 > nl || (data[s3] !== SPACE && s3 !== nl)) {
      throw new Error(`malformed CRI log record: ${JSON.stringify(data.toString('utf8', start, Math.min(nl, start + 80)))}`);
    }
    // Neighbouring records mostly share their timestamp (one per write): compare bytes, parse rarely.
    const tsLen = s1 - start;
    const last = this.lastTs;
    if (last === undefined || last.length !== tsLen || data.compare(last, 0, tsLen, start, s1) !== 0) {
      const t = this.ts.parse(data.toString('latin1', start, s1));
      this.lastTs = Buffer.from(data.subarray(start, s1));
      this.lastSeconds = t.seconds;
      this.lastNanos = t.nanos;
    }
    return {
      // "stdout" / "stderr": the fourth letter tells them apart
      stream: data[s1 + 4] === 0x65 /* e */ ? LogStream.LOG_STREAM_STDERR : LogStream.LOG_STREAM_STDOUT,
      timeSeconds: this.lastSeconds,
      timeNanos: this.lastNanos,
      line: data.subarray(Math.min(s3 + 1, nl), nl),
      partial: data[s2 + 1] === 0x50 /* P */,
      rawBytes: nl + 1 - start,
    };
  }
}

/** What a run of whole lines (or one partial piece) shares; the capture attaches one to each
 * ring chunk it can, so a follower serves it without looking at its lines. */
export interface PackedRun {
  /** The lines as printed: whole lines with their "\n", or one partial piece. */
  text: Buffer;
  lines: number;
  flags: number;
  seconds: number;
  nanos: number;
}

/**
 * Builds the packed form of LogChunk (LogsRequest.packed): text pieces and runs. Runs prepared
 * at capture time are added whole; records parsed from CRI bytes (files, tails, filters) are
 * added line by line. No object per line: at high line rates the per-line LogEntry (with its
 * int64 timestamp) was most of what the agent and its clients spent per byte.
 */
export class PackedBuilder {
  private readonly pieces_: Buffer[] = [];
  private scratch: Buffer | undefined;
  private scratchPos = 0;
  readonly runBytes: number[] = [];
  readonly runLines: number[] = [];
  readonly runFlags: number[] = [];
  readonly runSeconds: number[] = [];
  readonly runNanos: number[] = [];

  constructor(private readonly capacity: number) {}

  get lines(): number {
    let n = 0;
    for (const l of this.runLines) n += l;
    return n;
  }

  /** One more run (merged with the previous one when they share everything and are whole). */
  private run(bytes: number, lines: number, flags: number, seconds: number, nanos: number): void {
    const r = this.runLines.length - 1;
    if (r >= 0 && (flags & PACKED_PARTIAL) === 0 && this.runFlags[r] === flags && this.runNanos[r] === nanos && this.runSeconds[r] === seconds) {
      this.runBytes[r]! += bytes;
      this.runLines[r]! += lines;
    } else {
      this.runBytes.push(bytes);
      this.runLines.push(lines);
      this.runFlags.push(flags);
      this.runSeconds.push(seconds);
      this.runNanos.push(nanos);
    }
  }

  addRun(r: PackedRun): void {
    this.sealScratch();
    this.pieces_.push(r.text);
    this.run(r.text.length, r.lines, r.flags, r.seconds, r.nanos);
  }

  /** A record's content src[start, end), plus "\n" unless it is partial. */
  addLine(src: Buffer, start: number, end: number, flags: number, seconds: number, nanos: number): void {
    const n = end - start + ((flags & PACKED_PARTIAL) === 0 ? 1 : 0);
    if (this.scratch === undefined || this.scratchPos + n > this.scratch.length) {
      this.sealScratch();
      this.scratch = Buffer.allocUnsafe(Math.max(this.capacity, n));
      this.scratchPos = 0;
    }
    const sc = this.scratch;
    if (end > start) this.scratchPos += src.copy(sc, this.scratchPos, start, end);
    if ((flags & PACKED_PARTIAL) === 0) sc[this.scratchPos++] = NEWLINE;
    this.run(n, 1, flags, seconds, nanos);
  }

  /** Closes the text written into scratch so far as a piece; the rest of scratch stays usable. */
  private sealScratch(): void {
    if (this.scratch === undefined || this.scratchPos === 0) return;
    this.pieces_.push(this.scratch.subarray(0, this.scratchPos));
    this.scratch = this.scratch.subarray(this.scratchPos);
    this.scratchPos = 0;
  }

  get empty(): boolean {
    return this.runLines.length === 0;
  }

  /** All text, as the pieces it was built from. */
  pieces(): Buffer[] {
    this.sealScratch();
    return this.pieces_;
  }
}

export const PACKED_STDERR = 1;
export const PACKED_PARTIAL = 2;

/** Header length of a record (up to and including the space before CONTENT). */
export function contentOffset(data: Buffer, start: number): number {
  const s1 = data.indexOf(SPACE, start);
  const s2 = data.indexOf(SPACE, s1 + 1);
  const s3 = data.indexOf(SPACE, s2 + 1);
  return s3 + 1 - start;
}
