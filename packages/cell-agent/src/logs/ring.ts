// The newest records of the current instance, in memory and bounded in bytes, so a follower
// that keeps up reads without touching the files. A run of whole lines is kept as the unit wrote
// it (its packed form) and its CRI records are rebuilt only when a reader asks for them.
import { NEWLINE, type PackedRun } from './cri.js';

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
  for (let ls = 0; ls < t.length;) {
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

export class LogRing {
  private chunks: RingChunk[] = [];
  private bytes = 0;

  /** Keeps at least the newest chunk, and older ones while they fit in `maxBytes`. */
  constructor(private readonly maxBytes: number) {}

  /** Offset of the oldest record kept; undefined when empty. */
  get start(): number | undefined {
    return this.chunks[0]?.start;
  }

  /** CRI records `buf` at offset `start`; with `run` (and its `head`), `buf` is not kept (it may be scratch). */
  add(start: number, buf: Buffer, run: PackedRun | undefined, head: Buffer | undefined): void {
    const keep = run === undefined || head === undefined;
    const size = keep ? buf.length : run.text.length + head.length;
    this.chunks.push({ start, len: buf.length, buf: keep ? buf : undefined, run, head, size });
    this.bytes += size;
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.size >= this.maxBytes) {
      this.bytes -= this.chunks.shift()!.size;
    }
  }

  clear(): void {
    this.chunks = [];
    this.bytes = 0;
  }

  /** Up to about `max` bytes from `offset` (at or after `start`), as whole chunks where they are whole. */
  piecesFrom(offset: number, max: number): ReadPiece[] {
    const ring = this.chunks;
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
    return pieces;
  }
}
