// The unit record (unit.json in the unit's state dir): what a restarted agent needs to carry on
// supervising a unit — restart count, instance counter, last and terminal states, the instance
// that was current — and its JSON form.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { overwriteRecord } from '../runtime/files.js';
import type { UnitState } from './unit-state.js';

export interface UnitRecord {
  hash: string;
  restartCount: number;
  instanceCounter: number;
  lastState?: TerminatedJson;
  current?: { instance: number; startedAt?: string; imageDigest: string; stopSignal: string };
  completed?: boolean;
  /** The unit ended for good (no restart by policy): a restarted agent must not run it again. */
  terminal?: TerminatedJson;
}

export interface TerminatedJson {
  exitCode: number;
  signal: number;
  reason: string;
  message: string;
  startedAt?: string;
  finishedAt: string;
  containerId: string;
}

export function readUnitRecord(dir: string): UnitRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, 'unit.json'), 'utf8')) as UnitRecord;
  } catch {
    return undefined;
  }
}

/** Synchronous: small, and it keeps records in the order the transitions happened. Throws on I/O errors. */
export function writeUnitRecord(dir: string, rec: UnitRecord): void {
  mkdirSync(dir, { recursive: true });
  overwriteRecord(join(dir, 'unit.json'), JSON.stringify(rec));
}

export function terminatedToJson(s: Extract<UnitState, { kind: 'exited' }>): TerminatedJson {
  return {
    exitCode: s.exitCode,
    signal: s.signal,
    reason: s.reason,
    message: s.message,
    ...(s.startedAt ? { startedAt: s.startedAt.toISOString() } : {}),
    finishedAt: s.finishedAt.toISOString(),
    containerId: s.containerId,
  };
}

export function terminatedFromJson(j: TerminatedJson): UnitState {
  return {
    kind: 'exited',
    exitCode: j.exitCode,
    signal: j.signal,
    reason: j.reason,
    message: j.message,
    startedAt: j.startedAt ? new Date(j.startedAt) : undefined,
    finishedAt: new Date(j.finishedAt),
    containerId: j.containerId,
  };
}
