// LogChunk as a read yields it: entries, or the packed form (LogsRequest.packed), whose text may
// stay in the pieces it was built from until someone reads packedText.
import type { LogChunk } from '@cello/proto/cell';
import type { PackedBuilder } from './cri.js';

const EMPTY = Buffer.alloc(0);

/** A LogChunk with defaults for what `c` leaves out. (Not LogChunk.fromPartial: that copies
 * every entry and array, per chunk, on the hot path.) */
export function logChunk(c: Partial<LogChunk>): LogChunk {
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

// The packed text's pieces travel on the chunk itself, in a property no encoder or comparison
// sees, for the agent's serializer (server/wire.ts) to gather straight into the message.
const PIECES = Symbol('packedTextPieces');
type PiecedLogChunk = LogChunk & { [PIECES]?: readonly Buffer[] | undefined };

/** The chunk's packed text as the pieces it was built from (one piece when it was never split). */
export function packedTextPieces(c: LogChunk): readonly Buffer[] {
  return (c as PiecedLogChunk)[PIECES] ?? [c.packedText];
}

/** Bytes of packed text, without joining its pieces. */
export function packedTextLength(c: LogChunk): number {
  const pieces = (c as PiecedLogChunk)[PIECES];
  if (pieces === undefined) return c.packedText.length;
  let n = 0;
  for (const p of pieces) n += p.length;
  return n;
}

export function packedChunk(b: PackedBuilder, dropped: number): LogChunk {
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
    Object.defineProperty(chunk, PIECES, { value: pieces, writable: true, configurable: true, enumerable: false });
    let joined: Buffer | undefined;
    Object.defineProperty(chunk, 'packedText', {
      enumerable: true,
      configurable: true,
      get: () => (joined ??= Buffer.concat(pieces)),
      set: (v: Buffer) => {
        (chunk as PiecedLogChunk)[PIECES] = undefined;
        joined = v;
      },
    });
  }
  return chunk;
}
