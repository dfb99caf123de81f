// SPDY/3.1 framing and session, byte for byte: frames built by hand as spdystream (the API
// server's SPDY library) writes them, sent over a real socket pair. Interoperability with the
// real API server is covered by virtual-node.test.ts (kubectl exec/port-forward).
import { describe, expect, it } from 'vitest';
import { createServer, connect, type Socket } from 'node:net';
import { createDeflate, createInflate, constants as Z } from 'node:zlib';
import {
  FrameReader,
  HeaderCodec,
  SpdySession,
  type SpdyStream,
  controlFrame,
  dataFrame,
  decodeHeaderBlock,
  encodeHeaderBlock,
  FrameType,
  FLAG_FIN,
  MAX_CONTROL_LENGTH,
  MAX_HEADER_BLOCK,
  type Frame,
} from '../../src/k8s/kubelet/spdy/index.js';
import { SPDY3_DICTIONARY } from '../../src/k8s/kubelet/spdy/dictionary.js';

describe('SPDY/3 framing', () => {
  it('the header dictionary is the 1423 bytes of the SPDY/3 draft', () => {
    expect(SPDY3_DICTIONARY.length).toBe(1423);
    expect(SPDY3_DICTIONARY.subarray(0, 11).toString('latin1')).toBe('\0\0\0\x07options');
    expect(SPDY3_DICTIONARY.subarray(-10).toString('latin1')).toBe('-,*,enq=0.'); // as in moby/spdystream's spdy/dictionary.go
    expect(SPDY3_DICTIONARY.includes(Buffer.from('x-forwarded-for'))).toBe(false);
  });

  it('encodes header blocks with 32-bit lengths, lowercase names and NUL-joined values', () => {
    const b = encodeHeaderBlock({ StreamType: ['stdout'], 'x-multi': ['a', 'b'] });
    expect(b.readUInt32BE(0)).toBe(2);
    expect(b.readUInt32BE(4)).toBe('streamtype'.length);
    expect(b.subarray(8, 18).toString()).toBe('streamtype');
    expect(decodeHeaderBlock(b)).toEqual({ streamtype: ['stdout'], 'x-multi': ['a', 'b'] });
    expect(() => decodeHeaderBlock(b.subarray(0, b.length - 1))).toThrow(/truncated/);
  });

  it('compresses each block against the dictionary in one shared context, each block decodable on arrival', async () => {
    const c = HeaderCodec.compressor();
    const blocks: Record<string, string[]>[] = [{ streamtype: ['error'] }, { streamtype: ['stdout'] }, { streamtype: ['stdout'], port: ['8080'] }];
    const compressed: Buffer[] = [];
    for (const h of blocks) compressed.push(await c.run(encodeHeaderBlock(h)));
    // zlib header with FDICT set and the dictionary's Adler-32, as Go's zlib.NewWriterLevelDict writes.
    expect(compressed[0]![1]! & 0x20).toBe(0x20);
    // Every block ends in a sync flush (00 00 ff ff) so the peer can decode it alone.
    for (const b of compressed) expect(b.subarray(-4).toString('hex')).toBe('0000ffff');
    // Later blocks reuse the shared window: the repeated header costs less the second time.
    expect(compressed[1]!.length).toBeLessThan(compressed[0]!.length + 4);
    // Decoded block by block by an independent inflater with the dictionary.
    const inf = createInflate({ dictionary: SPDY3_DICTIONARY });
    const out: Buffer[] = [];
    for (const b of compressed) {
      await new Promise<void>((r) => {
        inf.write(b);
        inf.flush(Z.Z_SYNC_FLUSH, () => r());
      });
      const chunks: Buffer[] = [];
      let x;
      while ((x = inf.read()) !== null) chunks.push(x as Buffer);
      out.push(Buffer.concat(chunks));
    }
    expect(out.map((b) => decodeHeaderBlock(b))).toEqual(blocks);
    c.close();
  });

  it('splits a byte stream into control and data frames whatever the chunking', () => {
    const bytes = Buffer.concat([controlFrame(FrameType.PING, 0, Buffer.from([0, 0, 0, 7])), dataFrame(5, FLAG_FIN, Buffer.from('hello'))]);
    expect(bytes.subarray(0, 8).toString('hex')).toBe('8003000600000004');
    expect(bytes.subarray(12, 20).toString('hex')).toBe('0000000501000005');
    const r = new FrameReader();
    const frames: Frame[] = [];
    for (const b of bytes) frames.push(...r.push(Buffer.from([b])));
    expect(frames).toEqual([
      { kind: 'control', type: FrameType.PING, flags: 0, payload: Buffer.from([0, 0, 0, 7]) },
      { kind: 'data', streamId: 5, flags: FLAG_FIN, data: Buffer.from('hello') },
    ]);
    expect(() => new FrameReader().push(Buffer.from('800200060000000400000001', 'hex'))).toThrow(/version 2/);
  });
});

/** A hand-rolled SPDY client, as spdystream's client side writes frames. */
class Client {
  private readonly deflate = createDeflate({ dictionary: SPDY3_DICTIONARY });
  private readonly inflate = HeaderCodec.decompressor();
  private readonly reader = new FrameReader();
  frames: Frame[] = [];
  private waiters: (() => void)[] = [];

  constructor(readonly sock: Socket) {
    sock.on('data', (b: Buffer) => {
      this.frames.push(...this.reader.push(b));
      for (const w of this.waiters.splice(0)) w();
    });
  }

  private async headers(h: Record<string, string[]>): Promise<Buffer> {
    return new Promise((resolve) => {
      this.deflate.write(encodeHeaderBlock(h));
      this.deflate.flush(Z.Z_SYNC_FLUSH, () => {
        const out: Buffer[] = [];
        let c;
        while ((c = this.deflate.read()) !== null) out.push(c as Buffer);
        resolve(Buffer.concat(out));
      });
    });
  }

  async synStream(id: number, h: Record<string, string[]>, flags = 0): Promise<void> {
    const p = Buffer.alloc(10);
    p.writeUInt32BE(id, 0);
    this.sock.write(controlFrame(FrameType.SYN_STREAM, flags, Buffer.concat([p, await this.headers(h)])));
  }

  async next(pred: (f: Frame) => boolean): Promise<Frame> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      if (Date.now() > deadline) throw new Error(`no such frame; have ${JSON.stringify(this.frames)}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  replyHeaders(f: Frame): Promise<Record<string, string[]>> {
    if (f.kind !== 'control') throw new Error('not a control frame');
    return this.inflate.run(f.payload.subarray(4)).then(decodeHeaderBlock);
  }
}

describe('SPDY/3.1 session (server side)', () => {
  it('answers SYN_STREAM with SYN_REPLY, carries data both ways, half-closes with FIN, echoes PING, honours RST_STREAM and GOAWAY', async () => {
    const sessions: SpdySession[] = [];
    const server = createServer((sock) => {
      const s = new SpdySession(sock);
      sessions.push(s);
      s.on('stream', (st) => {
        // An echo service: uppercases what it receives, FIN after the peer's FIN.
        st.on('data', (b: Buffer) => st.write(Buffer.from(b.toString().toUpperCase())));
        st.on('end', () => st.end(`bye ${st.header('streamType')}`));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const sock = connect((server.address() as { port: number }).port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const c = new Client(sock);
    try {
      await c.synStream(1, { streamtype: ['stdout'] });
      await c.synStream(3, { streamtype: ['stdin'] });
      const r1 = await c.next((f) => f.kind === 'control' && f.type === FrameType.SYN_REPLY && f.payload.readUInt32BE(0) === 1);
      expect(await c.replyHeaders(r1)).toEqual({});
      const r3 = await c.next((f) => f.kind === 'control' && f.type === FrameType.SYN_REPLY && f.payload.readUInt32BE(0) === 3);
      expect(await c.replyHeaders(r3)).toEqual({}); // the shared context stayed in step
      sock.write(dataFrame(1, 0, Buffer.from('hello')));
      const d = await c.next((f) => f.kind === 'data' && f.streamId === 1);
      expect(d.kind === 'data' && d.data.toString()).toBe('HELLO');
      sock.write(dataFrame(1, FLAG_FIN, Buffer.alloc(0)));
      const bye = await c.next((f) => f.kind === 'data' && f.streamId === 1 && f.data.length > 0);
      expect(bye.kind === 'data' && bye.data.toString()).toBe('bye stdout');
      const fin = await c.next((f) => f.kind === 'data' && f.streamId === 1 && (f.flags & FLAG_FIN) !== 0);
      expect(fin.kind === 'data' && fin.data.length).toBe(0);
      // PING is echoed with its id.
      sock.write(controlFrame(FrameType.PING, 0, Buffer.from([0, 0, 0, 9])));
      const ping = await c.next((f) => f.kind === 'control' && f.type === FrameType.PING);
      expect(ping.kind === 'control' && ping.payload.readUInt32BE(0)).toBe(9);
      // WINDOW_UPDATE and SETTINGS are accepted and ignored (spdystream uses no flow control).
      sock.write(controlFrame(FrameType.WINDOW_UPDATE, 0, Buffer.from([0, 0, 0, 3, 0, 1, 0, 0])));
      sock.write(controlFrame(FrameType.SETTINGS, 0, Buffer.from([0, 0, 0, 0])));
      // RST_STREAM ends stream 3: its data is no longer delivered.
      const rst = Buffer.alloc(8);
      rst.writeUInt32BE(3, 0);
      rst.writeUInt32BE(5, 4);
      sock.write(controlFrame(FrameType.RST_STREAM, 0, rst));
      // Data on an unknown stream is refused with RST_STREAM INVALID_STREAM.
      sock.write(dataFrame(99, 0, Buffer.from('x')));
      const inval = await c.next((f) => f.kind === 'control' && f.type === FrameType.RST_STREAM);
      expect(inval.kind === 'control' && [inval.payload.readUInt32BE(0), inval.payload.readUInt32BE(4)]).toEqual([99, 2]);
      // GOAWAY: the server answers with its own and closes the connection.
      sock.write(controlFrame(FrameType.GOAWAY, 0, Buffer.alloc(8)));
      const ga = await c.next((f) => f.kind === 'control' && f.type === FrameType.GOAWAY);
      expect(ga.kind === 'control' && ga.payload.readUInt32BE(0)).toBe(3);
      await new Promise((r) => (sock.destroyed ? r(undefined) : sock.once('close', r)));
    } finally {
      sock.destroy();
      for (const s of sessions) s.close();
      await new Promise((r) => server.close(r));
    }
  });
});

/** A SPDY server on loopback whose sessions are collected; the caller's client connects to it. */
async function spdyServer(o: ConstructorParameters<typeof SpdySession>[1], onSession: (s: SpdySession) => void) {
  const sessions: SpdySession[] = [];
  const server = createServer((sock) => {
    const s = new SpdySession(sock, o);
    sessions.push(s);
    onSession(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const sock = connect((server.address() as { port: number }).port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  return {
    sock,
    client: new Client(sock),
    async stop() {
      sock.destroy();
      for (const s of sessions) s.close();
      await new Promise((r) => server.close(r));
    },
  };
}

const closed = (sock: Socket) => new Promise((r) => (sock.destroyed || sock.readableEnded ? r(undefined) : sock.once('close', r)));

describe('SPDY/3.1 session limits', () => {
  it('a header block that inflates past 256 KiB (a zlib bomb) closes the session with an error naming the limit; no stream is opened', async () => {
    const errors: Error[] = [];
    let streams = 0;
    const srv = await spdyServer({}, (s) => {
      s.on('protocolError', (e: Error) => errors.push(e));
      s.on('stream', () => streams++);
    });
    try {
      // 64 MiB of zeros as one header value, deflated chunk by chunk: about 64 KiB on the wire.
      const deflate = createDeflate({ dictionary: SPDY3_DICTIONARY });
      const prefix = Buffer.alloc(4 + 4 + 10 + 4);
      prefix.writeUInt32BE(1, 0);
      prefix.writeUInt32BE(10, 4);
      prefix.write('streamtype', 8);
      prefix.writeUInt32BE(64 * 2 ** 20, 18);
      deflate.write(prefix);
      const zeros = Buffer.alloc(64 * 1024);
      for (let i = 0; i < 1024; i++) deflate.write(zeros);
      const block = await new Promise<Buffer>((resolve) => {
        const out: Buffer[] = [];
        deflate.on('data', (c: Buffer) => out.push(c));
        deflate.flush(Z.Z_SYNC_FLUSH, () => resolve(Buffer.concat(out)));
      });
      expect(block.length).toBeLessThan(MAX_CONTROL_LENGTH);
      const p = Buffer.alloc(10);
      p.writeUInt32BE(1, 0);
      srv.sock.write(controlFrame(FrameType.SYN_STREAM, 0, Buffer.concat([p, block])));
      const ga = await srv.client.next((f) => f.kind === 'control' && f.type === FrameType.GOAWAY);
      expect(ga.kind).toBe('control');
      await closed(srv.sock);
      expect(errors.map((e) => e.message)).toEqual([`spdy: a header block inflates to more than ${MAX_HEADER_BLOCK} bytes (the limit); closing the session`]);
      expect(streams).toBe(0);
    } finally {
      await srv.stop();
    }
  });

  it('the decompressor stops inflating at the limit: a bomb is refused, and the context refuses later blocks', async () => {
    const inflater = HeaderCodec.decompressor(1024);
    const compressor = HeaderCodec.compressor();
    const ok = await compressor.run(encodeHeaderBlock({ streamtype: ['x'.repeat(500)] }));
    expect(decodeHeaderBlock(await inflater.run(ok))).toEqual({ streamtype: ['x'.repeat(500)] });
    const big = await compressor.run(encodeHeaderBlock({ streamtype: ['y'.repeat(4096)] }));
    await expect(inflater.run(big)).rejects.toThrow(/inflates to more than 1024 bytes/);
    await expect(inflater.run(ok)).rejects.toThrow(/closed/);
    compressor.close();
  });

  it('a control frame longer than any header block may be is refused from its length alone', () => {
    const h = Buffer.alloc(8);
    h.writeUInt16BE(0x8003, 0);
    h.writeUInt16BE(FrameType.SYN_STREAM, 2);
    h.writeUIntBE(MAX_CONTROL_LENGTH + 1, 5, 3);
    expect(() => new FrameReader().push(h)).toThrow(`spdy: control frame of ${MAX_CONTROL_LENGTH + 1} bytes is over the limit of ${MAX_CONTROL_LENGTH}`);
  });

  it('streams beyond maxStreams are refused with RST_STREAM REFUSED_STREAM; the session and its streams carry on', async () => {
    const opened: number[] = [];
    const srv = await spdyServer({ maxStreams: 2 }, (s) => s.on('stream', (st) => opened.push(st.id)));
    try {
      await srv.client.synStream(1, { streamtype: ['data'] });
      await srv.client.synStream(3, { streamtype: ['error'] });
      await srv.client.synStream(5, { streamtype: ['data'] });
      const rst = await srv.client.next((f) => f.kind === 'control' && f.type === FrameType.RST_STREAM);
      expect(rst.kind === 'control' && [rst.payload.readUInt32BE(0), rst.payload.readUInt32BE(4)]).toEqual([5, 3]);
      expect(opened).toEqual([1, 3]);
      // Closing one makes room for the next (the header context stayed in step too).
      srv.sock.write(controlFrame(FrameType.RST_STREAM, 0, Buffer.from([0, 0, 0, 1, 0, 0, 0, 5])));
      await srv.client.synStream(7, { streamtype: ['data'] });
      await srv.client.next((f) => f.kind === 'control' && f.type === FrameType.SYN_REPLY && f.payload.readUInt32BE(0) === 7);
      expect(opened).toEqual([1, 3, 7]);
    } finally {
      await srv.stop();
    }
  });

  it('backpressure: write() reports false past the high-water mark and drain follows once the peer reads; a paused stream stops the socket being read', async () => {
    let stream: SpdyStream | undefined;
    let session: SpdySession | undefined;
    const got: Buffer[] = [];
    const srv = await spdyServer({ highWaterMark: 256 * 1024 }, (s) => {
      session = s;
      s.on('stream', (st) => {
        stream = st;
        st.on('data', (b: Buffer) => got.push(b));
      });
    });
    try {
      await srv.client.synStream(1, { streamtype: ['stdout'] });
      await srv.client.next((f) => f.kind === 'control' && f.type === FrameType.SYN_REPLY);
      srv.sock.pause(); // the client stops reading
      const chunk = Buffer.alloc(64 * 1024, 1);
      let writes = 0;
      while (stream!.write(chunk)) {
        writes++;
        if (writes > 10_000) throw new Error('write() never reported backpressure');
        await new Promise((r) => setImmediate(r));
      }
      expect(session!.bufferedBytes()).toBeGreaterThan(256 * 1024);
      // A kernel socket buffer's worth went out; the rest waits in the session, not unbounded.
      const drained = new Promise((r) => stream!.once('drain', r));
      srv.sock.resume();
      await drained;
      expect(session!.bufferedBytes()).toBeLessThanOrEqual(256 * 1024);

      // Inbound: paused, the stream's data stays in the kernel until resume().
      stream!.pause();
      await new Promise((r) => setTimeout(r, 50));
      srv.sock.write(dataFrame(1, 0, Buffer.from('while paused')));
      await new Promise((r) => setTimeout(r, 200));
      expect(Buffer.concat(got).toString()).toBe('');
      stream!.resume();
      await waitUntil(() => Buffer.concat(got).toString() === 'while paused');
    } finally {
      await srv.stop();
    }
  });

  it('drain follows backpressure even when the socket takes every write at once (no socket drain event comes)', async () => {
    let stream: SpdyStream | undefined;
    const srv = await spdyServer({ highWaterMark: 64 * 1024 }, (s) => s.on('stream', (st) => (stream = st)));
    try {
      await srv.client.synStream(1, { streamtype: ['stdout'] });
      await srv.client.next((f) => f.kind === 'control' && f.type === FrameType.SYN_REPLY);
      // Small frames written in one go: over the mark while queued, each taken by a reading peer.
      let n = 0;
      while (stream!.write(Buffer.alloc(1024, 2))) if (++n > 1000) throw new Error('write() never reported backpressure');
      let drained = false;
      stream!.once('drain', () => (drained = true));
      await waitUntil(() => drained);
    } finally {
      await srv.stop();
    }
  });
});

async function waitUntil(pred: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
