// Reading one instance per a LogsRequest: where a tail or since-time starts, then whole records
// in either form (entries, or packed), following the writer until the instance ends.
import type { LogChunk, LogEntry, LogsRequest } from '@cello/proto/cell';
import { nowNs } from './clock.js';
import { logChunk, packedChunk } from './chunk.js';
import { CriParser, PackedBuilder, type ParsedRecord } from './cri.js';
import type { LogInstance } from './instance.js';
import { TextRenderer, unpackLogChunk } from './render.js';

const READ_BYTES = 1 << 20;
/** At most this much output is let in before a waiting follower reads (see settle). */
const BATCH_BYTES = 256 * 1024;

/**
 * The records of `inst` the request asks for (the request is already checked). Follows (when
 * asked, and not for a previous instance) until the instance ends, `isClosed()` says the logs were closed, or `signal` aborts.
 * `droppedBytes` is set when data this reader had not yet read was rotated away.
 */
export async function* readInstance(inst: LogInstance, req: LogsRequest, signal: AbortSignal, ringBytes: number, isClosed: () => boolean): AsyncIterable<LogChunk> {
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
      if (!follow || inst.ended || isClosed()) {
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
      await inst.settle(offset + Math.min(BATCH_BYTES, ringBytes / 8), signal, steady ? 1 : 0);
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
