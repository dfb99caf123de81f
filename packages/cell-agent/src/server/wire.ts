// The CellAgent service definition the agent serves, and the gRPC channel/server options its
// stream paths want.
//
// Why a custom definition: the generated serializers run every outgoing message through a
// generic protobuf writer, which copies the payload into a fresh array (`finish()`), then again
// into a Buffer (`Buffer.from`), before grpc-js copies it a third time into its 5-byte framed
// output. For the bulk frames of PortForward (`data`) and Exec/Attach (`stdout`/`stderr`) that
// was most of the agent's CPU per byte. A frame that is one length-delimited bytes field is
// trivial to encode by hand: one allocation, one copy, the same bytes on the wire (tag, varint
// length, payload) — so every existing client decodes it unchanged. Anything else falls back to
// the generated serializer.
import { makeGenericClientConstructor, type ChannelCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { type CellAgentClient, CellAgentService, type ExecOutput, type LogChunk, type PortForwardFrame } from '@cello/proto/cell';
import { packedTextPieces } from '../logs/chunk.js';

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len += 1;
  }
  return len;
}

// Payloads built by gatherBytesField, each mapped to its whole encoded message (which holds the
// payload right after the field header), so serializing it copies nothing.
const preEncoded = new WeakMap<Uint8Array, { field: number; message: Buffer }>();

/**
 * Copies `chunks` (`total` bytes) into one buffer laid out as an encoded single-bytes-field
 * message and returns the payload part; serializing a frame with this payload as field `field`
 * then returns the prepared message as is. One copy gathers many socket reads into one frame.
 */
export function gatherBytesField(field: number, chunks: readonly Buffer[], total: number): Buffer {
  const message = Buffer.allocUnsafe(1 + varintLength(total) + total);
  const head = writeHeader(message, field, total);
  let pos = head;
  for (const c of chunks) pos += c.copy(message, pos);
  const payload = message.subarray(head);
  preEncoded.set(payload, { field, message });
  return payload;
}

function writeHeader(out: Buffer, field: number, n: number): number {
  out[0] = (field << 3) | 2;
  let pos = 1;
  let v = n;
  while (v >= 0x80) {
    out[pos++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[pos++] = v;
  return pos;
}

/** A message whose only field is `field` (wire type 2) holding `payload`. */
export function encodeBytesField(field: number, payload: Uint8Array): Buffer {
  const pre = preEncoded.get(payload);
  if (pre !== undefined && pre.field === field) return pre.message;
  const n = payload.length;
  const head = 1 + varintLength(n);
  const out = Buffer.allocUnsafe(head + n);
  out.set(payload, writeHeader(out, field, n));
  return out;
}

function varintSum(xs: readonly number[]): number {
  let n = 0;
  for (const x of xs) n += x < 0x80 ? 1 : x < 0x4000 ? 2 : x < 0x200000 ? 3 : varintLength(x);
  return n;
}

function putVarint(out: Buffer, pos: number, v: number): number {
  while (v >= 0x80) {
    out[pos++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[pos++] = v;
  return pos;
}

function putBytes(out: Buffer, pos: number, field: number, b: Uint8Array): number {
  out[pos++] = (field << 3) | 2;
  pos = putVarint(out, pos, b.length);
  out.set(b, pos);
  return pos + b.length;
}

function putPacked(out: Buffer, pos: number, field: number, xs: readonly number[], size: number): number {
  out[pos++] = (field << 3) | 2;
  pos = putVarint(out, pos, size);
  for (const x of xs) {
    if (x < 0x80) out[pos++] = x;
    else pos = putVarint(out, pos, x);
  }
  return pos;
}

// grpc-js copies a serialized response into its own length-prefixed frame at once (server
// responses are never compressed: server-interceptors serializeMessage), so the encoding may
// live in one reused buffer instead of a fresh allocation per message: at hundreds of MB/s of
// logs those allocations were a good part of the agent's GC time.
let scratchBuf = Buffer.allocUnsafe(0);
const SCRATCH_KEEP = 4 << 20;

function scratch(n: number): Buffer {
  if (n > SCRATCH_KEEP) return Buffer.allocUnsafe(n);
  if (scratchBuf.length < n) scratchBuf = Buffer.allocUnsafe(Math.max(n, Math.min(SCRATCH_KEEP, scratchBuf.length * 2)));
  return scratchBuf.subarray(0, n);
}

/**
 * LogChunk in its packed form (no entries), encoded in one pass into one buffer, byte for byte
 * what the generated encoder writes. Chunks with entries use the generated encoder.
 */
export function encodePackedLogChunk(c: LogChunk): Buffer {
  // (The result is only valid until the next call: see scratch.)
  const head: [number, readonly number[]][] = [
    [5, c.packedRunBytes],
    [6, c.packedRunLines],
    [7, c.packedRunFlags],
  ];
  const tail: [number, readonly number[]][] = [
    [9, c.packedRunSeconds],
    [10, c.packedRunNanos],
  ];
  const sizes = [...head, ...tail].map(([, xs]) => varintSum(xs));
  let total = 0;
  if (c.droppedBytes !== 0) total += 1 + varintLength(c.droppedBytes);
  // packed_text may still be in pieces: gather them into the message, never join them first.
  const pieces = packedTextPieces(c);
  let textLen = 0;
  for (const p of pieces) textLen += p.length;
  if (c.text.length > 0) total += 1 + varintLength(c.text.length) + c.text.length;
  if (textLen > 0) total += 1 + varintLength(textLen) + textLen;
  [...head, ...tail].forEach(([, xs], i) => {
    if (xs.length > 0) total += 1 + varintLength(sizes[i]!) + sizes[i]!;
  });
  if (c.packedBaseSeconds !== 0) total += 1 + varintLength(c.packedBaseSeconds);
  const out = scratch(total);
  let pos = 0;
  if (c.droppedBytes !== 0) {
    out[pos++] = (2 << 3) | 0;
    pos = putVarint(out, pos, c.droppedBytes);
  }
  if (c.text.length > 0) pos = putBytes(out, pos, 3, c.text);
  if (textLen > 0) {
    out[pos++] = (4 << 3) | 2;
    pos = putVarint(out, pos, textLen);
    for (const p of pieces) {
      out.set(p, pos);
      pos += p.length;
    }
  }
  head.forEach(([f, xs], i) => {
    if (xs.length > 0) pos = putPacked(out, pos, f, xs, sizes[i]!);
  });
  if (c.packedBaseSeconds !== 0) {
    out[pos++] = (8 << 3) | 0;
    pos = putVarint(out, pos, c.packedBaseSeconds);
  }
  tail.forEach(([f, xs], i) => {
    if (xs.length > 0) pos = putPacked(out, pos, f, xs, sizes[head.length + i]!);
  });
  return out;
}

const lg = CellAgentService.logs;
const pf = CellAgentService.portForward;
const ex = CellAgentService.exec;
const at = CellAgentService.attach;

function execOutputSerialize(fallback: (m: ExecOutput) => Buffer) {
  return (m: ExecOutput): Buffer => {
    const f = m.frame;
    if (f?.$case === 'stdout') return encodeBytesField(1, f.value);
    if (f?.$case === 'stderr') return encodeBytesField(2, f.value);
    return fallback(m);
  };
}

/** CellAgentService with hand-written serializers for the bulk stream frames (see above). */
export const cellAgentServiceDefinition: typeof CellAgentService = {
  ...CellAgentService,
  logs: { ...lg, responseSerialize: (m: LogChunk): Buffer => (m.entries.length === 0 ? encodePackedLogChunk(m) : lg.responseSerialize(m)) },
  portForward: {
    ...pf,
    responseSerialize: (m: PortForwardFrame): Buffer => (m.frame?.$case === 'data' ? encodeBytesField(PF_DATA_FIELD, m.frame.value) : pf.responseSerialize(m)),
  },
  exec: { ...ex, responseSerialize: execOutputSerialize(ex.responseSerialize) },
  attach: { ...at, responseSerialize: execOutputSerialize(at.responseSerialize) },
};

/**
 * Options for a channel that carries bulk streams (logs, port-forward) from an agent. HTTP/2's
 * default 64 KiB receive window lets the agent send one window per round trip and then wait;
 * a large window keeps the pipe full. It only bounds what may be in flight, memory is used only
 * when the reader is slower than the agent.
 */
export const STREAM_CHANNEL_OPTIONS: ChannelOptions = {
  'grpc-node.flow_control_window': 8 << 20,
  'grpc.max_receive_message_length': 64 << 20,
};

/** PortForwardFrame.data's field number. */
export const PF_DATA_FIELD = 2;

/**
 * If `buf` is a message whose only field is `field` (wire type 2) spanning the whole buffer,
 * that field's bytes (a view, no copy); otherwise undefined.
 */
export function decodeBytesField(field: number, buf: Buffer): Buffer | undefined {
  if (buf.length < 2 || buf[0] !== ((field << 3) | 2)) return undefined;
  let len = 0;
  let mul = 1;
  let pos = 1;
  for (;;) {
    if (pos >= buf.length || pos > 6) return undefined;
    const b = buf[pos++]!;
    len += (b & 0x7f) * mul;
    if (b < 0x80) break;
    mul *= 128;
  }
  return pos + len === buf.length ? buf.subarray(pos) : undefined;
}

const pfDecode = CellAgentService.portForward.responseDeserialize;
const exDecode = CellAgentService.exec.responseDeserialize;
const atDecode = CellAgentService.attach.responseDeserialize;

function execOutputDeserialize(fallback: (b: Buffer) => ExecOutput) {
  return (b: Buffer): ExecOutput => {
    const out = decodeBytesField(1, b);
    if (out !== undefined) return { frame: { $case: 'stdout', value: out } };
    const err = decodeBytesField(2, b);
    if (err !== undefined) return { frame: { $case: 'stderr', value: err } };
    return fallback(b);
  };
}

/**
 * CellAgentService for clients: the bulk frames (port-forward data, exec output) are decoded as
 * views of the received message instead of copies (the generated decoder copies every bytes
 * field once more). What the client gets is the same.
 */
export const cellAgentClientDefinition: typeof CellAgentService = {
  ...CellAgentService,
  portForward: {
    ...pf,
    responseDeserialize: (b: Buffer): PortForwardFrame => {
      const data = decodeBytesField(PF_DATA_FIELD, b);
      return data !== undefined ? { frame: { $case: 'data', value: data } } : pfDecode(b);
    },
  },
  exec: { ...ex, responseDeserialize: execOutputDeserialize(exDecode) },
  attach: { ...at, responseDeserialize: execOutputDeserialize(atDecode) },
};

const FastCellAgentClient = makeGenericClientConstructor(cellAgentClientDefinition, 'cello.cell.v1.CellAgent') as unknown as typeof CellAgentClient;

/** A CellAgentClient that decodes bulk frames without copying them (see above). */
export function newCellAgentClient(address: string, creds: ChannelCredentials, options: ChannelOptions = {}): CellAgentClient {
  return new FastCellAgentClient(address, creds, options);
}
