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
  private readonly ts = new TimestampParser();

  push(buf: Buffer, out: ParsedRecord[]): void {
    let data = buf;
    if (this.carry !== undefined) {
      data = Buffer.concat([this.carry, buf]);
      this.carry = undefined;
    }
    let pos = 0;
    for (;;) {
      const nl = data.indexOf(NEWLINE, pos);
      if (nl === -1) break;
      out.push(this.parseRecord(data, pos, nl));
      pos = nl + 1;
    }
    if (pos < data.length) this.carry = Buffer.from(data.subarray(pos));
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

/** Header length of a record (up to and including the space before CONTENT). */
export function contentOffset(data: Buffer, start: number): number {
  const s1 = data.indexOf(SPACE, start);
  const s2 = data.indexOf(SPACE, s1 + 1);
  const s3 = data.indexOf(SPACE, s2 + 1);
  return s3 + 1 - start;
}
