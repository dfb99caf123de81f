// A SPDY/3.1 session over one upgraded connection, server side as a kubelet runs it: the peer
// opens streams (SYN_STREAM, answered with SYN_REPLY at once, as spdystream's servers do), both
// sides send DATA and half-close with FIN; PINGs are echoed; GOAWAY or the socket closing ends
// every stream. spdystream does not use flow-control windows, so WINDOW_UPDATE and SETTINGS are
// accepted and ignored; backpressure is TCP's. Writes report (as a Writable's do) when the bytes
// waiting for the socket pass a high-water mark, and a 'drain' follows; a stream paused by its
// consumer pauses reading the socket, which stalls every stream of the session as spdystream's
// blocking frame reader does, rather than buffering what the peer sends without limit.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import {
  FrameReader,
  FrameType,
  FLAG_FIN,
  FLAG_UNIDIRECTIONAL,
  HeaderCodec,
  MAX_DATA_LENGTH,
  MAX_HEADER_BLOCK,
  RstStatus,
  controlFrame,
  dataFrame,
  decodeHeaderBlock,
  encodeHeaderBlock,
  type Frame,
  type Headers,
} from './framing.js';

export class SpdyStream extends EventEmitter {
  /** The peer sent FIN: no more data will come. */
  remoteClosed = false;
  /** We sent FIN. */
  localClosed = false;
  private reset = false;

  constructor(
    private readonly session: SpdySession,
    readonly id: number,
    readonly headers: Headers,
  ) {
    super();
  }

  header(name: string): string | undefined {
    return this.headers[name.toLowerCase()]?.[0];
  }

  /** False once the session's outgoing bytes are over its high-water mark: wait for 'drain'. */
  write(data: Buffer | string): boolean {
    if (this.localClosed || this.reset) return true;
    let b = typeof data === 'string' ? Buffer.from(data) : data;
    while (b.length > MAX_DATA_LENGTH) {
      this.session.send(dataFrame(this.id, 0, b.subarray(0, MAX_DATA_LENGTH)));
      b = b.subarray(MAX_DATA_LENGTH);
    }
    if (b.length) this.session.send(dataFrame(this.id, 0, b));
    return !this.session.needsDrain();
  }

  /** Stops delivering the peer's data: the session stops reading its socket until resume(). */
  pause(): void {
    this.session.pauseFor(this);
  }
  resume(): void {
    this.session.resumeFor(this);
  }

  /** Half-close: FIN on an empty DATA frame. */
  end(data?: Buffer | string): void {
    if (data !== undefined) this.write(data);
    if (this.localClosed || this.reset) return;
    this.localClosed = true;
    this.session.send(dataFrame(this.id, FLAG_FIN, Buffer.alloc(0)));
    this.maybeDone();
  }

  /** Aborts the stream (RST_STREAM CANCEL). */
  cancel(): void {
    if (this.reset) return;
    this.reset = true;
    this.session.send(rst(this.id, RstStatus.CANCEL));
    this.done();
  }

  /** @internal */
  onData(data: Buffer, fin: boolean): void {
    if (this.reset) return;
    if (data.length) this.emit('data', data);
    if (fin) this.onFin();
  }
  /** @internal */
  onFin(): void {
    if (this.remoteClosed) return;
    this.remoteClosed = true;
    this.emit('end');
    this.maybeDone();
  }
  /** @internal */
  onReset(): void {
    if (this.reset) return;
    this.reset = true;
    if (!this.remoteClosed) {
      this.remoteClosed = true;
      this.emit('end');
    }
    this.done();
  }

  private maybeDone(): void {
    if (this.localClosed && this.remoteClosed) this.done();
  }
  private done(): void {
    this.session.resumeFor(this);
    this.session.forget(this.id);
    this.emit('close');
  }
}

function rst(streamId: number, status: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(streamId & 0x7fffffff, 0);
  p.writeUInt32BE(status, 4);
  return controlFrame(FrameType.RST_STREAM, 0, p);
}

export interface SpdySessionOptions {
  /** Outgoing bytes (queued and in the socket) above which writes report false; default 1 MiB. */
  highWaterMark?: number;
  /** Streams open at once; more are refused with RST_STREAM REFUSED_STREAM. Default 256. */
  maxStreams?: number;
  /** What one header block may inflate to; more closes the session. Default MAX_HEADER_BLOCK. */
  maxHeaderBlock?: number;
}

export class SpdySession extends EventEmitter {
  private readonly reader = new FrameReader();
  private readonly inflater: HeaderCodec;
  private readonly deflater = HeaderCodec.compressor();
  private readonly streams = new Map<number, SpdyStream>();
  /** Frames go out in order; a SYN_REPLY waits for its compressed headers, so does what follows. */
  private out: Promise<void> = Promise.resolve();
  private inbound: Promise<void> = Promise.resolve();
  private closed = false;
  private lastStreamId = 0;
  /** Bytes handed to send() that are not yet in the socket's buffer. */
  private queued = 0;
  /** A write reported backpressure: 'drain' is owed once the bytes are under the mark. */
  private drainOwed = false;
  private readonly paused = new Set<SpdyStream>();
  private readonly highWaterMark: number;
  private readonly maxStreams: number;

  constructor(
    private readonly socket: Duplex,
    o: SpdySessionOptions = {},
  ) {
    super();
    this.highWaterMark = o.highWaterMark ?? 1024 * 1024;
    this.maxStreams = o.maxStreams ?? 256;
    this.inflater = HeaderCodec.decompressor(o.maxHeaderBlock ?? MAX_HEADER_BLOCK);
    socket.on('drain', () => this.maybeDrain());
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.reader.push(chunk);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      for (const f of frames) this.inbound = this.inbound.then(() => this.onFrame(f)).catch((err: Error) => this.fail(err));
    });
    socket.on('close', () => this.teardown());
    socket.on('error', () => this.teardown());
  }

  /** @internal queued so frames keep their order behind pending header compression. */
  send(frame: Buffer | Promise<Buffer>): void {
    if (this.closed) return;
    const n = Buffer.isBuffer(frame) ? frame.length : 0;
    this.queued += n;
    const p = Promise.resolve(frame);
    this.out = this.out
      .then(async () => {
        const b = await p;
        this.queued -= n;
        // A write the socket takes at once emits no 'drain': the queue emptying is the signal then.
        if (!this.closed && !this.socket.destroyed && this.socket.write(b)) this.maybeDrain();
      })
      .catch((err: Error) => this.fail(err));
  }

  /** Outgoing bytes not yet on the wire: queued behind header compression plus the socket's buffer. */
  bufferedBytes(): number {
    return this.queued + this.socket.writableLength;
  }

  /** @internal true when a write should wait for 'drain', which then follows. */
  needsDrain(): boolean {
    if (this.bufferedBytes() <= this.highWaterMark) return false;
    this.drainOwed = true;
    return true;
  }

  private maybeDrain(): void {
    if (!this.drainOwed || this.bufferedBytes() > this.highWaterMark) return;
    this.drainOwed = false;
    this.emit('drain');
    for (const s of [...this.streams.values()]) s.emit('drain');
  }

  /** @internal */
  pauseFor(s: SpdyStream): void {
    this.paused.add(s);
    this.socket.pause();
  }
  /** @internal */
  resumeFor(s: SpdyStream): void {
    if (!this.paused.delete(s)) return;
    if (this.paused.size === 0 && !this.closed) this.socket.resume();
  }

  /** @internal */
  forget(id: number): void {
    this.streams.delete(id);
  }

  private async headerBlock(h: Headers): Promise<Buffer> {
    return this.deflater.run(encodeHeaderBlock(h));
  }

  private async onFrame(f: Frame): Promise<void> {
    if (f.kind === 'data') {
      const s = this.streams.get(f.streamId);
      if (!s) {
        this.send(rst(f.streamId, RstStatus.INVALID_STREAM));
        return;
      }
      s.onData(f.data, (f.flags & FLAG_FIN) !== 0);
      return;
    }
    const p = f.payload;
    switch (f.type) {
      case FrameType.SYN_STREAM: {
        const id = p.readUInt32BE(0) & 0x7fffffff;
        const headers = decodeHeaderBlock(await this.inflater.run(p.subarray(10)));
        this.lastStreamId = Math.max(this.lastStreamId, id);
        if (this.streams.size >= this.maxStreams) {
          this.emit('protocolError', new Error(`spdy: stream ${id} refused: ${this.maxStreams} streams are already open on this session`));
          this.send(rst(id, RstStatus.REFUSED_STREAM));
          return;
        }
        const s = new SpdyStream(this, id, headers);
        this.streams.set(id, s);
        const reply = Buffer.alloc(4);
        reply.writeUInt32BE(id);
        this.send(this.headerBlock({}).then((hb) => controlFrame(FrameType.SYN_REPLY, 0, Buffer.concat([reply, hb]))));
        this.emit('stream', s);
        if (f.flags & FLAG_FIN) s.onFin();
        if (f.flags & FLAG_UNIDIRECTIONAL) s.localClosed = true;
        return;
      }
      case FrameType.HEADERS: {
        const id = p.readUInt32BE(0) & 0x7fffffff;
        await this.inflater.run(p.subarray(4)); // keeps the shared context in step
        if (f.flags & FLAG_FIN) this.streams.get(id)?.onFin();
        return;
      }
      case FrameType.SYN_REPLY:
        // We open no streams; still decompress to keep the context in step.
        await this.inflater.run(p.subarray(4));
        return;
      case FrameType.RST_STREAM:
        this.streams.get(p.readUInt32BE(0) & 0x7fffffff)?.onReset();
        return;
      case FrameType.PING:
        this.send(controlFrame(FrameType.PING, 0, p));
        return;
      case FrameType.GOAWAY:
        this.close();
        return;
      case FrameType.SETTINGS:
      case FrameType.WINDOW_UPDATE:
      default:
        return; // no flow control in spdystream; unknown control frames are ignored per spec
    }
  }

  private fail(err: Error): void {
    this.emit('protocolError', err);
    this.close();
  }

  /** GOAWAY, then close the connection once queued frames are out. */
  close(): void {
    if (this.closed) return;
    const goaway = Buffer.alloc(8);
    goaway.writeUInt32BE(this.lastStreamId, 0);
    this.send(controlFrame(FrameType.GOAWAY, 0, goaway));
    void this.out.then(() => {
      this.closed = true;
      this.socket.end();
      this.teardown();
    });
  }

  private teardown(): void {
    if (this.closed && this.streams.size === 0 && !this.listenerCount('close')) return;
    this.closed = true;
    for (const s of [...this.streams.values()]) s.onReset();
    this.streams.clear();
    this.inflater.close();
    this.deflater.close();
    if (!this.socket.destroyed) this.socket.destroy();
    this.emit('close');
    this.removeAllListeners('close');
  }
}
