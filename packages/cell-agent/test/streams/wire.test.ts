// The hand-written serializers of the bulk stream frames must produce exactly what the
// generated decoders (every client: ctl, the controller's relays) read back.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CellAgentService, ExecOutput, LogChunk, PortForwardFrame } from '@cello/proto/cell';
import { cellAgentClientDefinition, cellAgentServiceDefinition, encodeBytesField, gatherBytesField, PF_DATA_FIELD } from '../../src/server/wire.js';

const pfSer = cellAgentServiceDefinition.portForward.responseSerialize;
const exSer = cellAgentServiceDefinition.exec.responseSerialize;
const logSer = cellAgentServiceDefinition.logs.responseSerialize;

describe('bulk frame serializers', () => {
  it('encode data frames byte for byte like the generated serializer, for every length class', () => {
    // Lengths around each varint boundary, and empty (a oneof member is present even when empty).
    for (const n of [0, 1, 127, 128, 16_383, 16_384, 65_536, 2_097_151, 2_097_152]) {
      const value = randomBytes(n);
      const msg = PortForwardFrame.fromPartial({ frame: { $case: 'data', value } });
      const mine = pfSer(msg);
      expect(mine.equals(CellAgentService.portForward.responseSerialize(msg)), `length ${n}`).toBe(true);
      const back = PortForwardFrame.decode(mine);
      expect(back.frame?.$case).toBe('data');
      expect(Buffer.from(back.frame!.value as Uint8Array).equals(value)).toBe(true);
    }
  });

  it('gathers chunks into one prepared message that serializes without another copy', () => {
    const chunks = [randomBytes(70_000), randomBytes(1), randomBytes(300_000)];
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const value = gatherBytesField(PF_DATA_FIELD, chunks, total);
    expect(value.equals(Buffer.concat(chunks))).toBe(true);
    const wire = pfSer(PortForwardFrame.fromPartial({ frame: { $case: 'data', value } }));
    expect(wire.buffer).toBe(value.buffer); // the prepared message itself
    const back = PortForwardFrame.decode(wire);
    expect(back.frame?.$case === 'data' && Buffer.from(back.frame.value).equals(value)).toBe(true);
    // The same payload under another field number is encoded afresh, not mislabelled.
    expect(ExecOutput.decode(encodeBytesField(1, value)).frame).toEqual({ $case: 'stdout', value: expect.anything() });
  });

  it('keeps stdout, stderr and the exit frame of Exec apart', () => {
    const out = ExecOutput.decode(exSer(ExecOutput.fromPartial({ frame: { $case: 'stdout', value: Buffer.from('out') } })));
    const err = ExecOutput.decode(exSer(ExecOutput.fromPartial({ frame: { $case: 'stderr', value: Buffer.from('err') } })));
    const exit = ExecOutput.decode(exSer(ExecOutput.fromPartial({ frame: { $case: 'exit', value: { exitCode: 3, signal: '', message: 'x' } } })));
    expect(out.frame?.$case === 'stdout' && Buffer.from(out.frame.value).toString()).toBe('out');
    expect(err.frame?.$case === 'stderr' && Buffer.from(err.frame.value).toString()).toBe('err');
    expect(exit.frame).toEqual({ $case: 'exit', value: { exitCode: 3, signal: '', message: 'x' } });
  });

  it('encodes packed log chunks byte for byte like the generated encoder', () => {
    const chunks = [
      LogChunk.fromPartial({ droppedBytes: 5_000_000_000 }),
      LogChunk.fromPartial({
        packedText: Buffer.from('a\nbb\npartial'),
        packedRunBytes: [5, 7],
        packedRunLines: [2, 1],
        packedRunFlags: [0, 3],
        packedBaseSeconds: 1_790_000_000,
        packedRunSeconds: [0, 200],
        packedRunNanos: [999_999_999, 0],
        text: Buffer.from('2026... a\n'),
      }),
      LogChunk.fromPartial({ packedText: randomBytes(300_000), packedRunBytes: [300_000], packedRunLines: [1], packedRunFlags: [2], packedRunSeconds: [0], packedRunNanos: [127] }),
    ];
    for (const c of chunks) {
      const mine = Buffer.from(logSer(c)); // (the serializer's buffer is reused by its next call)
      expect(mine.equals(CellAgentService.logs.responseSerialize(c))).toBe(true);
      expect(LogChunk.decode(mine)).toEqual(c);
    }
  });

  it('client side: decodes bulk frames as views, everything else as the generated decoder does', () => {
    const pfDe = cellAgentClientDefinition.portForward.responseDeserialize;
    const exDe = cellAgentClientDefinition.exec.responseDeserialize;
    const frames = [
      PortForwardFrame.fromPartial({ frame: { $case: 'data', value: randomBytes(200_000) } }),
      PortForwardFrame.fromPartial({ frame: { $case: 'data', value: Buffer.alloc(0) } }),
      PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }),
      PortForwardFrame.fromPartial({ frame: { $case: 'error', value: 'boom' } }),
    ];
    for (const f of frames) {
      const wire = CellAgentService.portForward.responseSerialize(f);
      expect(pfDe(wire)).toEqual(PortForwardFrame.decode(wire));
    }
    const wire = pfSer(frames[0]!);
    const got = pfDe(wire);
    expect(got.frame?.$case === 'data' && got.frame.value.buffer).toBe(wire.buffer); // a view
    // A data field followed by anything else is not a bare data frame: generated decoder.
    const odd = Buffer.concat([encodeBytesField(2, Buffer.from('ab')), Buffer.from([0x18, 0x01])]);
    expect(pfDe(odd)).toEqual(PortForwardFrame.decode(odd));
    for (const m of [
      ExecOutput.fromPartial({ frame: { $case: 'stdout', value: Buffer.from('o') } }),
      ExecOutput.fromPartial({ frame: { $case: 'stderr', value: Buffer.from('e') } }),
      ExecOutput.fromPartial({ frame: { $case: 'exit', value: { exitCode: 2, signal: 'SIGTERM', message: '' } } }),
    ]) {
      const w = CellAgentService.exec.responseSerialize(m);
      expect(exDe(w)).toEqual(ExecOutput.decode(w));
    }
  });
});
