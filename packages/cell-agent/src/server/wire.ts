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
import type { ChannelOptions } from '@grpc/grpc-js';
import { CellAgentService, type ExecOutput, type PortForwardFrame } from '@cello/proto/cell';

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
