// The unit's lifecycle state machine: the edges its header lists are allowed, anything else is
// refused with IllegalTransition (Unit changes state only through checkTransition).
import { describe, expect, it } from 'vitest';
import { checkTransition, IllegalTransition, type UnitState } from '../src/pod/unit-state.js';

const t0 = new Date(0);
const waiting: UnitState = { kind: 'waiting', reason: 'ContainerCreating', message: '' };
const starting: UnitState = { kind: 'starting', since: t0 };
const running: UnitState = { kind: 'running', startedAt: t0 };
const stopping: UnitState = { kind: 'stopping', startedAt: t0, since: t0, reason: 'stop' };
const exited: UnitState = { kind: 'exited', exitCode: 0, signal: 0, reason: 'Completed', message: '', startedAt: t0, finishedAt: t0, containerId: 'c' };

describe('checkTransition', () => {
  it('allows the documented edges', () => {
    for (const [from, to] of [
      [waiting, starting],
      [starting, running],
      [starting, exited],
      [starting, waiting],
      [running, stopping],
      [running, exited],
      [stopping, exited],
      [exited, waiting],
    ] as const) {
      expect(() => checkTransition(from, to)).not.toThrow();
    }
  });

  it('refuses an illegal transition', () => {
    for (const [from, to] of [
      [waiting, running],
      [running, waiting],
      [running, starting],
      [stopping, running],
      [exited, running],
      [exited, starting],
    ] as const) {
      expect(() => checkTransition(from, to)).toThrow(IllegalTransition);
      expect(() => checkTransition(from, to)).toThrow(`unit cannot go from ${from.kind} to ${to.kind}`);
    }
  });
});
