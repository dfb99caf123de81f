// A unit's lifecycle as an explicit state machine, in the style of libcontainer's:
//   Waiting  -> Starting            (image present, volumes ready: create the instance)
//   Starting -> Running | Exited    (runc started the process | runc failed to start it)
//   Starting -> Waiting             (config error, image pull failure: retry)
//   Running  -> Stopping | Exited   (we stop it | it ended on its own)
//   Stopping -> Exited
//   Exited   -> Waiting             (restart, after back-off)
// Every state carries what the status needs (reasons as Kubernetes spells them).
import { CelloError } from '@cello/proto';
export type UnitState =
  | { kind: 'waiting'; reason: string; message: string }
  | { kind: 'starting'; since: Date }
  | { kind: 'running'; startedAt: Date }
  | { kind: 'stopping'; startedAt: Date | undefined; since: Date; reason: string }
  | {
      kind: 'exited';
      exitCode: number;
      signal: number;
      reason: string;
      message: string;
      startedAt: Date | undefined;
      finishedAt: Date;
      containerId: string;
    };

const ALLOWED: Record<UnitState['kind'], UnitState['kind'][]> = {
  waiting: ['waiting', 'starting', 'exited'],
  starting: ['running', 'exited', 'waiting', 'stopping'],
  running: ['stopping', 'exited'],
  stopping: ['exited', 'stopping'],
  exited: ['waiting', 'exited'],
};

/** A unit asked to move where its state machine does not allow: a bug, not bad input. */
export class IllegalTransition extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Internal', message, options);
  }
}

export function checkTransition(from: UnitState, to: UnitState): void {
  if (!ALLOWED[from.kind].includes(to.kind)) throw new IllegalTransition(`unit cannot go from ${from.kind} to ${to.kind}`);
}
