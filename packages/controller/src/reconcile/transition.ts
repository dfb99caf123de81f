// The one way a cell changes state: a compare-and-swap of its record that the state machine
// (cells/state.ts) allows, with the new state's deadline; logged, recorded as an event, and
// the cell queued again to act on its new state.
import { Cell } from '@cello/proto/controller';
import { cellOf, podOf, refKey, splitKey, type CellRecord } from '../cells/schema.js';
import { enterStage, stageOfCell, stageRank } from '../cells/progress.js';
import { type CellState, canTransition, deadlineFor, stateName } from '../cells/state.js';
import type { ReconcileContext } from './context.js';

export interface Step {
  to: CellState;
  reason: string;
  message: string;
}

/** Moves a cell to `to` if the state machine allows it from where it is now (and it is in `expectFrom`, if given). */
export async function transition(
  ctx: ReconcileContext,
  id: string,
  to: CellState,
  reason: string,
  message: string,
  patch: (c: Cell, r: CellRecord) => void = () => undefined,
  expectFrom?: CellState[],
): Promise<CellRecord | undefined> {
  return transitionPath(ctx, id, [{ to, reason, message }], patch, expectFrom);
}

/**
 * Moves a cell through `steps` in order, in ONE write: each step must be allowed from the one
 * before it. A cell that boots for its pod goes Ready then Bound; as two writes, every pod paid
 * two store commits in a row on its way to Running (reconcile latency at 10,000 cells). Each
 * step is still logged and recorded as an event, so the history reads the same. Nothing moves
 * unless every step is allowed.
 */
export async function transitionPath(
  ctx: ReconcileContext,
  id: string,
  steps: Step[],
  patch: (c: Cell, r: CellRecord) => void = () => undefined,
  expectFrom?: CellState[],
): Promise<CellRecord | undefined> {
  if (steps.length === 0) throw new Error('transitionPath: no steps');
  let taken: Step[] = [];
  const rec = await ctx.cache.writeCell(id, (r) => {
    taken = []; // fn may run more than once (a lost compare-and-swap is retried)
    if (!r) return undefined;
    const c = cellOf(r);
    if (expectFrom && !expectFrom.includes(c.state)) return undefined;
    let from = c.state;
    for (const s of steps) {
      if (from !== s.to && !canTransition(from, s.to)) return undefined;
      if (from !== s.to) taken.push(s);
      from = s.to;
    }
    const last = steps[steps.length - 1]!;
    const at = new Date();
    if (taken.length > 0) c.stateSince = at;
    c.state = last.to;
    c.reason = last.reason;
    c.message = last.message;
    c.deadline = deadlineFor(last.to, at, ctx.t, r.graceSeconds ?? 30);
    patch(c, r);
    r.cell = Cell.toJSON(c);
    return r;
  });
  if (!rec || taken.length === 0) return undefined;
  for (const s of taken) {
    ctx.log.info({ cell: id, state: stateName(s.to), reason: s.reason }, 'cell state');
    const warn = /Timeout|Lost|Failed|Error/.test(s.reason);
    void ctx.events
      .record({ kind: 'Cell', name: id, type: warn ? 'Warning' : 'Normal', reason: s.reason || stateName(s.to), message: s.message || stateName(s.to) })
      .catch(() => undefined);
  }
  ctx.enqueue(`cell:${id}`);
  // Not awaited: the pod's stage is what users read, not what the cell's next step needs, and
  // waiting for a second store commit here put every cell transition at 10,000 cells past the
  // reconcile-latency goal (bench:controller --only scale). A late write cannot move the pod
  // back: podFollows only moves a pod forward on the same cell.
  void podFollows(ctx, id, cellOf(rec)).catch((err: unknown) => ctx.log.warn({ cell: id, err: String(err) }, 'pod stage not recorded'));
  return rec;
}

/** The pod bound to the cell enters the stage the cell's new state stands for, with its deadline. */
async function podFollows(ctx: ReconcileContext, id: string, c: Cell): Promise<void> {
  const stage = stageOfCell(c.state);
  if (!stage || !c.pod?.name) return;
  const key = refKey(c.pod);
  const cur = ctx.cache.pods.get(key)?.rec;
  if (!cur || cur.progress?.stage === stage) return;
  let entered = false;
  await ctx.cache.writePod(key, (r) => {
    entered = false;
    if (podOf(r).cellId !== id) return undefined; // not bound yet (a warm claim) or moved on
    if (r.progress && stageRank(r.progress.stage) > stageRank(stage)) return undefined; // a later stage landed first
    entered = enterStage(r, stage, { message: c.message, ...(c.deadline ? { deadline: c.deadline } : {}) });
    return entered ? r : undefined;
  });
  const [ns, name] = splitKey(key);
  if (entered) void ctx.note({ kind: 'Pod', namespace: ns, name, reason: stage, message: `cell ${id}: ${c.message}` });
}
