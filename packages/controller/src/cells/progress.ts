// "Why is my pod Pending": where a pod is on its way to running, kept in its store record and
// changed inside the writes that move it (one write per change, none when nothing changed).
// Stages: Selecting (an instance type and a cell), Launching (the instance), Booting (its
// address and agent), Bootstrapping (the agent's credentials), Pulling (images, after ApplyPod),
// Starting (containers), then Running.
import { PodPhase, type PodStatus } from '@cello/proto/cell';
import { PodProgress } from '@cello/proto/controller';
import { CellState } from './state.js';

export type PodStage = 'Selecting' | 'Launching' | 'Booting' | 'Bootstrapping' | 'Pulling' | 'Starting' | 'Running';

/** As stored (plain JSON, like the rest of the record). */
export interface PodProgressRecord {
  stage: PodStage;
  since: string;
  deadline?: string;
  attempts: number;
  lastError?: { reason: string; message: string; time: string; retryAt?: string; stage: PodStage };
  history: Array<{ stage: PodStage; since: string; message?: string }>;
}

const ORDER: readonly PodStage[] = ['Selecting', 'Launching', 'Booting', 'Bootstrapping', 'Pulling', 'Starting', 'Running'];

/** Where a stage comes on the way to Running (on one cell, a pod only moves forward). */
export function stageRank(stage: PodStage): number {
  return ORDER.indexOf(stage);
}

/** Entries kept in the timeline: a pod that keeps failing does not grow its record without bound. */
export const MAX_HISTORY = 20;

interface WithProgress {
  progress?: PodProgressRecord;
}

/**
 * Puts the pod in `stage` (with its deadline). False, and nothing changed, when it is there
 * already (the caller then skips its write).
 */
export function enterStage(r: WithProgress, stage: PodStage, o: { now?: Date; deadline?: Date; message?: string } = {}): boolean {
  const cur = r.progress;
  if (cur?.stage === stage) {
    // The same stage again with a new deadline (the next launch after a back-off).
    const deadline = o.deadline?.toISOString();
    if (!deadline || deadline === cur.deadline) return false;
    cur.deadline = deadline;
    return true;
  }
  const since = (o.now ?? new Date()).toISOString();
  const history = [...(cur?.history ?? []), { stage, since, ...(o.message ? { message: o.message } : {}) }].slice(-MAX_HISTORY);
  r.progress = {
    stage,
    since,
    ...(o.deadline ? { deadline: o.deadline.toISOString() } : {}),
    attempts: cur?.attempts ?? 0,
    ...(cur?.lastError && stage !== 'Running' ? { lastError: cur.lastError } : {}),
    history,
  };
  return true;
}

/** A failed attempt at the current stage (or `stage`): counted, with its reason and when the next try is. */
export function noteFailure(r: WithProgress, reason: string, message: string, o: { now?: Date; retryAt?: Date; stage?: PodStage } = {}): void {
  const now = o.now ?? new Date();
  if (o.stage) enterStage(r, o.stage, { now });
  const cur = r.progress ?? { stage: o.stage ?? 'Selecting', since: now.toISOString(), attempts: 0, history: [] };
  cur.attempts += 1;
  cur.lastError = { reason, message, time: now.toISOString(), stage: cur.stage, ...(o.retryAt ? { retryAt: o.retryAt.toISOString() } : {}) };
  r.progress = cur;
}

/** The same error already noted (a reconcile that found nothing new): no write needed. */
export function sameFailure(r: WithProgress, reason: string, message: string): boolean {
  const e = r.progress?.lastError;
  return !!e && e.reason === reason && e.message === message && e.stage === r.progress?.stage;
}

/** The stage a pod bound to a cell in `state` is in. */
export function stageOfCell(state: CellState): PodStage | undefined {
  switch (state) {
    case CellState.CELL_STATE_CREATING:
      return 'Launching';
    case CellState.CELL_STATE_BOOTING:
      return 'Booting';
    case CellState.CELL_STATE_READY:
    case CellState.CELL_STATE_BOUND:
      return 'Pulling';
    default:
      return undefined;
  }
}

/** For the API: the record's progress as the PodProgress message. */
export function progressMessage(p: PodProgressRecord | undefined): PodProgress | undefined {
  if (!p) return undefined;
  const d = (s: string | undefined) => (s ? new Date(s) : undefined);
  return PodProgress.fromPartial({
    stage: p.stage,
    since: d(p.since),
    deadline: d(p.deadline),
    attempts: p.attempts,
    lastError: p.lastError
      ? { reason: p.lastError.reason, message: p.lastError.message, time: d(p.lastError.time), retryAt: d(p.lastError.retryAt), stage: p.lastError.stage }
      : undefined,
    history: p.history.map((h) => ({ stage: h.stage, since: d(h.since), message: h.message ?? '' })),
  });
}

const CAPACITY_CODES = /\b(InsufficientInstanceCapacity|InstanceLimitExceeded|MaxSpotInstanceCountExceeded|SpotMaxPriceTooLow|InsufficientCapacity|VcpuLimitExceeded)\b/;

/** The reason a failed launch shows: the provider's capacity code when it names one. */
export function launchErrorReason(err: unknown, capacity: boolean): string {
  const m = CAPACITY_CODES.exec(err instanceof Error ? err.message : String(err));
  if (m) return m[1]!;
  return capacity ? 'InsufficientCapacity' : 'LaunchError';
}

/** Image pull failures an agent reports in a waiting container's reason. */
const PULL_ERRORS = new Set(['ErrImagePull', 'ImagePullBackOff', 'InvalidImageName', 'ErrImageNeverPull', 'RegistryUnavailable']);
const CREATING = new Set(['', 'ContainerCreating', 'PodInitializing']);

/**
 * The stage an agent's status tells, for a pod on a Bound cell: Running once its phase left
 * Pending; Starting once a container got past creation (pulled: created, running, ended or
 * failing to start); Pulling until then, with the pull error if a container has one.
 */
export function stageOfAgentStatus(st: PodStatus): { stage: PodStage; error?: { reason: string; message: string } } {
  if (st.phase !== PodPhase.POD_PHASE_PENDING && st.phase !== PodPhase.POD_PHASE_UNSPECIFIED) return { stage: 'Running' };
  const all = [...st.initContainerStatuses, ...st.containerStatuses];
  for (const c of all) {
    const s = c.state?.state;
    if (s?.$case === 'waiting' && PULL_ERRORS.has(s.value.reason)) return { stage: 'Pulling', error: { reason: s.value.reason, message: `${c.name}: ${s.value.message}` } };
  }
  const past = all.some((c) => {
    const s = c.state?.state;
    return s?.$case === 'running' || s?.$case === 'terminated' || (s?.$case === 'waiting' && !CREATING.has(s.value.reason));
  });
  return { stage: past ? 'Starting' : 'Pulling' };
}
