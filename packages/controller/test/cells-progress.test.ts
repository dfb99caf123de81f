// The pod progress record's rules (cells/progress.ts) and how cellctl words it.
import { describe, expect, it } from 'vitest';
import { PodPhase, PodStatus } from '@cello/proto/cell';
import { PodObject } from '@cello/proto/controller';
import { enterStage, MAX_HISTORY, noteFailure, progressMessage, sameFailure, stageOfAgentStatus, type PodProgressRecord } from '../src/cells/progress.js';
import { podStatusWord, progressWord } from '../src/cellctl/format.js';

const t0 = new Date('2026-01-01T00:00:00Z');

describe('progress record', () => {
  it('a stage entered again is no change (no write); a new deadline is', () => {
    const r: { progress?: PodProgressRecord } = {};
    expect(enterStage(r, 'Selecting', { now: t0 })).toBe(true);
    expect(enterStage(r, 'Selecting', { now: t0 })).toBe(false);
    expect(enterStage(r, 'Launching', { now: t0, deadline: new Date(t0.getTime() + 120_000) })).toBe(true);
    expect(enterStage(r, 'Launching', { now: t0, deadline: new Date(t0.getTime() + 120_000) })).toBe(false);
    expect(enterStage(r, 'Launching', { now: t0, deadline: new Date(t0.getTime() + 240_000) })).toBe(true);
    expect(r.progress!.history.map((h) => h.stage)).toEqual(['Selecting', 'Launching']);
  });

  it('counts failures, keeps the last error until Running, and bounds the timeline', () => {
    const r: { progress?: PodProgressRecord } = {};
    noteFailure(r, 'InsufficientInstanceCapacity', 'local.nano: no capacity', { now: t0, stage: 'Launching' });
    expect(sameFailure(r, 'InsufficientInstanceCapacity', 'local.nano: no capacity')).toBe(true);
    noteFailure(r, 'LaunchTimeout', 'no instance after 120s', { now: t0, retryAt: new Date(t0.getTime() + 5000) });
    expect(r.progress).toMatchObject({ stage: 'Launching', attempts: 2, lastError: { reason: 'LaunchTimeout', stage: 'Launching', retryAt: '2026-01-01T00:00:05.000Z' } });
    enterStage(r, 'Booting', { now: t0 });
    expect(r.progress!.lastError?.reason).toBe('LaunchTimeout');
    enterStage(r, 'Running', { now: t0 });
    expect(r.progress!.lastError).toBeUndefined();
    for (let i = 0; i < 50; i++) enterStage(r, i % 2 ? 'Launching' : 'Booting', { now: t0 });
    expect(r.progress!.history.length).toBe(MAX_HISTORY);
  });

  it('reads the stage from the agent status', () => {
    const waiting = (reason: string) =>
      PodStatus.fromPartial({
        phase: PodPhase.POD_PHASE_PENDING,
        containerStatuses: [{ name: 'app', state: { state: { $case: 'waiting', value: { reason, message: 'm' } } } }],
      });
    expect(stageOfAgentStatus(waiting('ContainerCreating'))).toEqual({ stage: 'Pulling' });
    expect(stageOfAgentStatus(waiting('ErrImagePull'))).toEqual({ stage: 'Pulling', error: { reason: 'ErrImagePull', message: 'app: m' } });
    expect(stageOfAgentStatus(waiting('CreateContainerError')).stage).toBe('Starting');
    expect(stageOfAgentStatus(PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_RUNNING })).stage).toBe('Running');
  });
});

describe('cellctl STATUS of a Pending pod', () => {
  const pod = (g: PodProgressRecord, cellId = 'cell-1') =>
    PodObject.fromPartial({ metadata: { name: 'p' }, cellId, status: { phase: PodPhase.POD_PHASE_PENDING }, progress: progressMessage(g) });
  it('the stage, its error, and when it is retried', () => {
    const now = t0.getTime();
    const g: PodProgressRecord = { stage: 'Launching', since: t0.toISOString(), attempts: 3, history: [] };
    expect(progressWord(pod(g), now)).toBe('Launching');
    g.lastError = { reason: 'InsufficientInstanceCapacity', message: 'x', time: t0.toISOString(), stage: 'Launching', retryAt: new Date(now + 19_500).toISOString() };
    expect(podStatusWord(pod(g), now)).toBe('Launching (InsufficientInstanceCapacity, retry in 20s)');
    expect(podStatusWord(pod(g), now + 30_000)).toBe('Launching (InsufficientInstanceCapacity)');
    // An error of an earlier stage is not this stage's.
    g.stage = 'Booting';
    expect(podStatusWord(pod(g), now + 30_000)).toBe('Booting');
    g.stage = 'Running';
    expect(progressWord(pod(g), now)).toBeUndefined();
  });
});
