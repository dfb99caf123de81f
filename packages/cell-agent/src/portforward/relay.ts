// The byte relay of port-forward's stream path, used by both ends: the agent's stream listener
// (client connection <-> pod socket) and `cell-agent ctl port-forward` (local connection <->
// agent stream port).
//
// Why not `a.pipe(b)`: on this 2-core machine two `.pipe()` relays in a chain measured ~700 MB/s,
// plain relays reading into one large static buffer (`onread`) ~900-1,100 MB/s. With 'data'
// events Node allocates a 64 KiB buffer per read; a 1 MiB static buffer means fewer, larger
// reads and, while the writer keeps up, no allocation at all (StaticReads). In the agent, the
// pod socket read with 'data' events cost 1.5 ms of CPU per MB, read into static buffers 0.4.
// `onread` is a socket constructor option: sockets this process connects take it directly;
// accepted and IPC-passed ones are re-wrapped while still unread (endWithStaticReads), and
// any other socket relays with 'data' events.
import { Socket as NetSocket, type Socket } from 'node:net';

export const RELAY_READ_BYTES = 1 << 20;

/** Takes a chunk; returns true when it still holds on to it after returning (e.g. a queued write). */
type Sink = (chunk: Buffer) => boolean;

/** Spare read buffers a StaticReads keeps (the writer is paused long before more are queued). */
const MAX_SPARES = 4;

/**
 * `onread` for net.connect / tls.connect: reads land in one large buffer, and each read is
 * handed to the current sink as a view. The buffer is reused for the next read unless the sink
 * kept the view (its write was queued, not done at once): then the next read takes a spare
 * buffer, and the kept one becomes a spare again when its write is done (`release`). So a relay
 * allocates a few buffers once and never again, whether its writer keeps up or not (a fresh
 * 1 MiB buffer per queued write cost page faults: measured ~10% of the agent's CPU). Before a
 * sink is set (e.g. while a handshake line is parsed) reads are copied and held.
 */
export class StaticReads {
  private sink: Sink | undefined;
  private held: Buffer[] = [];
  private buffer: Buffer;
  private readonly spares: Buffer[] = [];
  // (Returning true: the relay pauses the socket itself when the other side is full.)
  readonly onread: { buffer: () => Buffer; callback: (n: number, buf: Buffer) => boolean };

  constructor(private readonly size = RELAY_READ_BYTES) {
    this.buffer = Buffer.allocUnsafeSlow(size);
    this.onread = {
      // Node asks for the buffer of the next read after each callback.
      buffer: () => this.buffer,
      callback: (n, buf) => {
        if (this.sink === undefined) {
          this.held.push(Buffer.from(buf.subarray(0, n)));
          return true;
        }
        if (this.sink(buf.subarray(0, n))) this.buffer = this.spares.pop() ?? Buffer.allocUnsafeSlow(this.size);
        return true;
      },
    };
  }

  /** A chunk a sink kept is no longer needed: its buffer may take reads again. */
  release(chunk: Buffer): void {
    if (chunk.byteOffset !== 0 || chunk.buffer.byteLength !== this.size || this.spares.length >= MAX_SPARES) return;
    this.spares.push(Buffer.from(chunk.buffer, 0, this.size));
  }

  /** Routes reads to `sink`, first the bytes held so far. */
  setSink(sink: Sink | undefined): void {
    this.sink = sink;
    if (sink === undefined) return;
    for (const c of this.held.splice(0)) sink(c);
  }
}

export interface RelayEnd {
  socket: Socket;
  /** Set when `socket` was created with `reads.onread`; otherwise 'data' events are used. */
  reads?: StaticReads;
  /** Bytes already read from this end that belong to the relay (sent to the other end first). */
  early?: Buffer[];
}

export interface RelayResult {
  /** Bytes a -> b and b -> a. */
  aToB: number;
  bToA: number;
  /** Set when the relay ended on an error or an abrupt close rather than two half-closes. */
  error?: Error;
}

/**
 * Copies bytes both ways until both directions have ended. A half-close on one side is passed
 * on (`end()`) and the other direction keeps flowing; a slow writer pauses its reader
 * (backpressure both ways). An error or an abrupt close on either side destroys both.
 * `onBytes` is called per chunk, for metrics.
 */
export function relay(a: RelayEnd, b: RelayEnd, onBytes?: (direction: 'aToB' | 'bToA', n: number) => void): Promise<RelayResult> {
  const result: RelayResult = { aToB: 0, bToA: 0 };
  return new Promise((resolve) => {
    let closed = 0;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      resolve(result);
    };
    const fail = (err: Error) => {
      result.error ??= err;
      a.socket.destroy();
      b.socket.destroy();
    };
    const onClose = () => {
      closed += 1;
      if (closed === 2) finish();
    };
    const pump = (src: RelayEnd, dst: Socket, dir: 'aToB' | 'bToA') => {
      let waiting = false;
      const resume = () => {
        waiting = false;
        src.socket.resume();
      };
      const forward: Sink = (chunk) => {
        result[dir] += chunk.length;
        onBytes?.(dir, chunk.length);
        const reads = src.reads;
        let kept = false;
        const full = !dst.write(chunk, reads === undefined ? undefined : () => kept && reads.release(chunk));
        if (full && !waiting) {
          waiting = true;
          src.socket.pause();
          dst.once('drain', resume);
        }
        // A write done at once (the usual case) leaves nothing queued: the chunk is free again.
        kept = dst.writableLength > 0;
        return kept;
      };
      for (const c of src.early ?? []) forward(c);
      if (src.reads) src.reads.setSink(forward);
      else src.socket.on('data', forward);
      src.socket.on('end', () => dst.end());
      src.socket.on('error', fail);
      src.socket.on('close', () => {
        // Closed before its read side ended (reset, destroyed): not a clean end of the stream.
        if (!src.socket.readableEnded && !finished) fail(result.error ?? new Error('connection closed before it ended'));
        onClose();
      });
      src.socket.resume();
    };
    pump(a, b.socket, 'aToB');
    pump(b, a.socket, 'bToA');
    // A side that closed before the relay began has no 'close' event left to wait for.
    for (const end of [a, b]) {
      if (!end.socket.closed) continue;
      fail(new Error('connection closed before the relay started'));
      onClose();
    }
  });
}

/**
 * A relay end for a socket this process did not create (accepted, or passed over IPC: neither
 * can take `onread`): the same connection re-wrapped to read into a static buffer. Only done
 * while `s` has read nothing (PortForwarder and pauseOnConnect servers hand sockets over
 * unread); otherwise, or if Node's socket internals differ, `s` as it is, relaying 'data'
 * events. After a re-wrap `s` is destroyed (the connection lives on in the new socket).
 */
export function endWithStaticReads(s: Socket): RelayEnd {
  const internal = s as unknown as { _handle: unknown; _readableState?: { ended?: boolean } };
  if (internal._handle == null || s.connecting || s.destroyed || s.readableLength > 0 || internal._readableState?.ended !== false) return { socket: s };
  const reads = new StaticReads();
  const handle = internal._handle;
  internal._handle = null;
  const socket = new NetSocket({ handle, allowHalfOpen: true, onread: reads.onread } as unknown as ConstructorParameters<typeof NetSocket>[0]);
  socket.pause();
  // Without its handle, destroying `s` closes nothing; it releases what refers to it (an
  // accepted socket counts as one of its server's connections until then: server.close() waits).
  s.destroy();
  return { socket, reads };
}
