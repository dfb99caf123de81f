// The cell lifecycle as an explicit state machine. Every state but Terminated has a deadline;
// a cell that overstays fails with a reason and moves towards termination, so nothing waits
// forever on a machine that never booted or never stopped.
import { CellState } from '@cello/proto/controller';
import { CelloError } from '../errors.js';

export { CellState };

const NEXT: Record<CellState, CellState[]> = {
  [CellState.CELL_STATE_UNSPECIFIED]: [CellState.CELL_STATE_CREATING],
  [CellState.CELL_STATE_CREATING]: [CellState.CELL_STATE_BOOTING, CellState.CELL_STATE_TERMINATING],
  [CellState.CELL_STATE_BOOTING]: [CellState.CELL_STATE_READY, CellState.CELL_STATE_TERMINATING],
  [CellState.CELL_STATE_READY]: [CellState.CELL_STATE_BOUND, CellState.CELL_STATE_TERMINATING],
  [CellState.CELL_STATE_BOUND]: [CellState.CELL_STATE_DRAINING, CellState.CELL_STATE_TERMINATING],
  [CellState.CELL_STATE_DRAINING]: [CellState.CELL_STATE_TERMINATING],
  [CellState.CELL_STATE_TERMINATING]: [CellState.CELL_STATE_TERMINATED],
  [CellState.CELL_STATE_TERMINATED]: [],
  [CellState.UNRECOGNIZED]: [],
};

export function canTransition(from: CellState, to: CellState): boolean {
  return NEXT[from]?.includes(to) ?? false;
}

export class TransitionError extends CelloError {
  constructor(
    readonly from: CellState,
    readonly to: CellState,
  ) {
    super('FailedPrecondition', `illegal cell transition ${stateName(from)} -> ${stateName(to)}`);
  }
}

export function stateName(s: CellState): string {
  const n = CellState[s] ?? String(s);
  const short = n.replace('CELL_STATE_', '');
  return short.charAt(0) + short.slice(1).toLowerCase();
}

export interface Timeouts {
  createSeconds: number;
  bootSeconds: number;
  /** A Ready or Bound cell whose agent stayed silent this long is lost. */
  healthSeconds: number;
  /** Added to the pod's grace period for Draining. */
  drainSlackSeconds: number;
  terminateSeconds: number;
}

export const DEFAULT_TIMEOUTS: Timeouts = {
  createSeconds: 120,
  bootSeconds: 300,
  healthSeconds: 15,
  drainSlackSeconds: 15,
  terminateSeconds: 120,
};

/** When a cell entering `state` at `now` times out; undefined for states without a deadline. */
export function deadlineFor(state: CellState, now: Date, t: Timeouts, graceSeconds = 30): Date | undefined {
  const s = (n: number) => new Date(now.getTime() + n * 1000);
  switch (state) {
    case CellState.CELL_STATE_CREATING:
      return s(t.createSeconds);
    case CellState.CELL_STATE_BOOTING:
      return s(t.bootSeconds);
    case CellState.CELL_STATE_DRAINING:
      return s(graceSeconds + t.drainSlackSeconds);
    case CellState.CELL_STATE_TERMINATING:
      return s(t.terminateSeconds);
    default:
      // Ready and Bound are bounded by the health deadline, which moves with each heartbeat.
      return undefined;
  }
}

/** The reason a cell gets when it overstays a state. */
export function timeoutReason(state: CellState): string {
  switch (state) {
    case CellState.CELL_STATE_CREATING:
      return 'LaunchTimeout';
    case CellState.CELL_STATE_BOOTING:
      return 'BootTimeout';
    case CellState.CELL_STATE_DRAINING:
      return 'DrainTimeout';
    case CellState.CELL_STATE_TERMINATING:
      return 'TerminateTimeout';
    default:
      return 'HealthTimeout';
  }
}
