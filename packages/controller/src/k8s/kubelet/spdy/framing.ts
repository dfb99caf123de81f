// SPDY/3.1 framing, the part the Kubernetes streaming protocols use (the API server speaks it to
// kubelets for exec, attach and port-forward, through moby/spdystream): control frames
// SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE, and DATA
// frames. Header blocks are zlib-compressed against the SPDY/3 dictionary with one compression
// context per direction for the whole session, each block ending in a sync flush.
import { constants as Z, createDeflate, createInflate, type Deflate, type Inflate } from 'node:zlib';
import { SPDY3_DICTIONARY } from './dictionary.js';
import { CelloError } from '../../../errors.js';

export const VERSION = 3;
export enum FrameType {
  SYN_STREAM = 1,
  SYN_REPLY = 2,
  RST_STREAM = 3,
  SETTINGS = 4,
  PING = 6,
  GOAWAY = 7,
  HEADERS = 8,
  WINDOW_UPDATE = 9,
}
export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;
export const MAX_DATA_LENGTH = 0xffffff;
/**
 * What one header block may inflate to: Go's http.DefaultMaxHeaderBytes is 1 MiB for a whole
 * request, spdystream has no limit at all; the streaming protocols send a handful of short
 * headers. Without a bound, a few KiB of deflated zeros inflate to gigabytes (a zlib bomb).
 */
export const MAX_HEADER_BLOCK = 256 * 1024;
/** A control frame's payload: a header block that inflates to at most MAX_HEADER_BLOCK is smaller than this deflated. */
export const MAX_CONTROL_LENGTH = MAX_HEADER_BLOCK + 1024;

export const RstStatus = {
  PROTOCOL_ERROR: 1,
  INVALID_STREAM: 2,
  REFUSED_STREAM: 3,
  CANCEL: 5,
  INTERNAL_ERROR: 6,
  STREAM_ALREADY_CLOSED: 9,
} as const;

export type Headers = Record<string, string[]>;

export type Frame = { kind: 'data'; streamId: number; flags: number; data: Buffer } | { kind: 'control'; type: number; flags: number; payload: Buffer };

/** Splits a byte stream into frames; keeps the incomplete tail for the next push. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Frame[] = [];
    while (this.buf.length >= 8) {
      const len = this.buf.readUIntBE(5, 3);
      // Refused before its body is buffered: a control frame is never that long.
      if (this.buf[0]! & 0x80 && len > MAX_CONTROL_LENGTH) throw new Error(`spdy: control frame of ${len} bytes is over the limit of ${MAX_CONTROL_LENGTH}`);
      if (this.buf.length < 8 + len) break;
      const flags = this.buf[4]!;
      const body = this.buf.subarray(8, 8 + len);
      if (this.buf[0]! & 0x80) {
        const version = this.buf.readUInt16BE(0) & 0x7fff;
        if (version !== VERSION) throw new Error(`spdy: unsupported version ${version} (want 3)`);
        out.push({ kind: 'control', type: this.buf.readUInt16BE(2), flags, payload: Buffer.from(body) });
      } else {
        out.push({ kind: 'data', streamId: this.buf.readUInt32BE(0) & 0x7fffffff, flags, data: Buffer.from(body) });
      }
      this.buf = this.buf.subarray(8 + len);
    }
    return out;
  }
}

export function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(0x8000 | VERSION, 0);
  h.writeUInt16BE(type, 2);
  h.writeUInt32BE(payload.length, 4);
  h[4] = flags;
  return Buffer.concat([h, payload]);
}

export function dataFrame(streamId: number, flags: number, data: Buffer): Buffer {
  if (data.length > MAX_DATA_LENGTH) throw new Error(`spdy: data frame of ${data.length} bytes is over the limit`);
  const h = Buffer.alloc(8);
  h.writeUInt32BE(streamId & 0x7fffffff, 0);
  h.writeUInt32BE(data.length, 4);
  h[4] = flags;
  return Buffer.concat([h, data]);
}

/** The uncompressed header block: count, then (name, value) with 32-bit lengths; values joined by NUL. */
export function encodeHeaderBlock(h: Headers): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.alloc(4);
  const entries = Object.entries(h);
  n.writeUInt32BE(entries.length);
  parts.push(n);
  for (const [name, values] of entries) {
    const nb = Buffer.from(name.toLowerCase());
    const vb = Buffer.from(values.join('\0'));
    const l1 = Buffer.alloc(4);
    l1.writeUInt32BE(nb.length);
    const l2 = Buffer.alloc(4);
    l2.writeUInt32BE(vb.length);
    parts.push(l1, nb, l2, vb);
  }
  return Buffer.concat(parts);
}

export function decodeHeaderBlock(b: Buffer): Headers {
  const out: Headers = {};
  let off = 0;
  const need = (n: number) => {
    if (off + n > b.length) throw new Error('spdy: truncated header block');
  };
  need(4);
  const count = b.readUInt32BE(off);
  off += 4;
  for (let i = 0; i < count; i++) {
    need(4);
    const nl = b.readUInt32BE(off);
    off += 4;
    need(nl);
    const name = b
      .subarray(off, off + nl)
      .toString('utf8')
      .toLowerCase();
    off += nl;
    need(4);
    const vl = b.readUInt32BE(off);
    off += 4;
    need(vl);
    const value = b.subarray(off, off + vl).toString('utf8');
    off += vl;
    out[name] = [...(out[name] ?? []), ...value.split('\0')];
  }
  return out;
}

export class HeaderBlockTooLarge extends CelloError {
  constructor(limit: number) {
    super('ResourceExhausted', `spdy: a header block inflates to more than ${limit} bytes (the limit); closing the session`);
  }
}

/**
 * One direction's zlib context. Blocks go through strictly in order (the context is shared by
 * every frame of the session); each ends with a sync flush so the peer can decode it alone.
 * Output is counted as zlib produces it, so a block over `maxOutput` is refused after at most
 * one more chunk (16 KiB), not once it has all been inflated into memory.
 */
export class HeaderCodec {
  private chain: Promise<unknown> = Promise.resolve();
  private current: { chunks: Buffer[]; size: number; over: boolean } | undefined;

  private constructor(
    private readonly z: Deflate | Inflate,
    private readonly maxOutput: number,
  ) {
    z.on('error', () => undefined); // surfaced through run()'s rejection
    z.on('data', (c: Buffer) => {
      const cur = this.current;
      if (!cur || cur.over) return;
      cur.size += c.length;
      if (cur.size > this.maxOutput) {
        cur.over = true;
        cur.chunks = [];
        // Stops zlib at once: no further input of this (or any later) block is processed.
        this.z.destroy();
        return;
      }
      cur.chunks.push(c);
    });
  }

  static compressor(): HeaderCodec {
    return new HeaderCodec(createDeflate({ dictionary: SPDY3_DICTIONARY }), Infinity);
  }
  static decompressor(maxOutput = MAX_HEADER_BLOCK): HeaderCodec {
    return new HeaderCodec(createInflate({ dictionary: SPDY3_DICTIONARY }), maxOutput);
  }

  run(input: Buffer): Promise<Buffer> {
    const p = this.chain.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          const cur = { chunks: [] as Buffer[], size: 0, over: false };
          this.current = cur;
          let finished = false;
          const done = (err?: Error) => {
            if (finished) return;
            finished = true;
            this.z.off('error', onError);
            this.z.off('close', onClose);
            this.current = undefined;
            if (cur.over) reject(new HeaderBlockTooLarge(this.maxOutput));
            else if (err) reject(err);
            else resolve(Buffer.concat(cur.chunks));
          };
          const onError = (err: Error) => done(err);
          const onClose = () => done(new Error('spdy: header compression context closed'));
          this.z.once('error', onError);
          this.z.once('close', onClose);
          if (this.z.destroyed) return done(new Error('spdy: header compression context closed'));
          this.z.write(input);
          this.z.flush(Z.Z_SYNC_FLUSH, () => {
            // Whatever the flush produced and is still buffered goes through the 'data' handler.
            while (this.z.read() !== null);
            done();
          });
        }),
    );
    this.chain = p.catch(() => undefined);
    return p;
  }

  close(): void {
    this.z.destroy();
  }
}
