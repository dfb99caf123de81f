// The one way a cell changes state: a compare-and-swap of its record that the state machine
// (cells/state.ts) allows, with the new state's deadline; logged, recorded as an event, and
// the cell queued again to act on its new state.
import { Cell } from '@cello/proto/controller';
import { cellOf, podOf, refKey, splitKey, type CellRecord } from '../cells/schema.js';
import { enterStage, stageOfCell } from '../cells/progress.js';
import { type CellState, canTransition, deadlineFor, stateName } from '../cells/state.js';
import type { ReconcileContext } from './context.js';

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
  let moved = false;
  const rec = await ctx.cache.writeCell(id, (r) => {
    moved = false; // fn may run more than once (a lost compare-and-swap is retried)
    if (!r) return undefined;
    const c = cellOf(r);
    if (expectFrom && !expectFrom.includes(c.state)) return undefined;
    if (c.state !== to && !canTransition(c.state, to)) return undefined;
    const at = new Date();
    if (c.state !== to) {
      c.stateSince = at;
      moved = true;
    }
    c.state = to;
    c.reason = reason;
    c.message = message;
    c.deadline = deadlineFor(to, at, ctx.t, r.graceSeconds ?? 30);
    patch(c, r);
    r.cell = Cell.toJSON(c);
    return r;
  });
  if (moved && rec) {
    ctx.log.info({ cell: id, state: stateName(to), reason }, 'cell state');
    const warn = /Timeout|Lost|Failed|Error/.test(reason);
    void ctx.events
      .record({ kind: 'Cell', name: id, type: warn ? 'Warning' : 'Normal', reason: reason || stateName(to), message: message || stateName(to) })
      .catch(() => undefined);
    ctx.enqueue(`cell:${id}`);
    await podFollows(ctx, id, cellOf(rec));
  }
  return moved ? rec : undefined;
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
    entered = enterStage(r, stage, { message: c.message, ...(c.deadline ? { deadline: c.deadline } : {}) });
    return entered ? r : undefined;
  });
  const [ns, name] = splitKey(key);
  if (entered) void ctx.note({ kind: 'Pod', namespace: ns, name, reason: stage, message: `cell ${id}: ${c.message}` });
}
