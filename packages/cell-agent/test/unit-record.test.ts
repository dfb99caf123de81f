// The unit record a restarted agent reads back: written and read in the unit's state dir, the
// terminated state's JSON form round-trips, and a missing or torn record reads as none.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readUnitRecord, terminatedFromJson, terminatedToJson, writeUnitRecord } from '../src/pod/unit-record.js';

const root = mkdtempSync(join(tmpdir(), 'unit-record-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('unit record', () => {
  it('writes and reads back the record, creating the unit dir', () => {
    const dir = join(root, 'units', 'web');
    const exited = { kind: 'exited', exitCode: 1, signal: 0, reason: 'Error', message: 'boom', startedAt: new Date(1000), finishedAt: new Date(2000), containerId: 'c1' } as const;
    const rec = {
      hash: 'h',
      restartCount: 2,
      instanceCounter: 3,
      completed: false,
      lastState: terminatedToJson(exited),
      current: { instance: 3, imageDigest: 'sha256:x', stopSignal: 'SIGTERM' },
    };
    writeUnitRecord(dir, rec);
    const back = readUnitRecord(dir);
    expect(back).toEqual(rec);
    expect(terminatedFromJson(back!.lastState!)).toEqual(exited);
  });

  it('keeps an unknown start time unknown', () => {
    const exited = { kind: 'exited', exitCode: 0, signal: 9, reason: 'Error', message: '', startedAt: undefined, finishedAt: new Date(5), containerId: '' } as const;
    expect(terminatedToJson(exited)).not.toHaveProperty('startedAt');
    expect(terminatedFromJson(terminatedToJson(exited))).toEqual(exited);
  });

  it('reads a missing or torn record as none', () => {
    expect(readUnitRecord(join(root, 'nothing'))).toBeUndefined();
    const dir = join(root, 'torn');
    writeUnitRecord(dir, { hash: 'h', restartCount: 0, instanceCounter: 0 });
    writeFileSync(join(dir, 'unit.json'), '{"hash":');
    expect(readUnitRecord(dir)).toBeUndefined();
  });
});
