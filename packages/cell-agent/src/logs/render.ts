// A log chunk as a client prints it: its entries in either form, and the text `kubectl logs`
// would show (with timestamps when asked).
import { LogStream, type LogChunk, type LogEntry } from '@cello/proto/cell';
import { formatRfc3339Nano } from './clock.js';
import { NEWLINE, PACKED_PARTIAL, PACKED_STDERR } from './cri.js';

const NL = Buffer.from([NEWLINE]);

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
