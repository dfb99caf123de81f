// Garbage collection of instances: what the provider runs under this controller's ID that the
// store does not know (or knows as Terminated).
import { DEFAULT_RETAIN_SECONDS, pruneSavedLogs } from '../logs/saved.js';
import { cellKey, cellOf, type CellRecord } from '../cells/schema.js';
import { CellState } from '../cells/state.js';
import { errMsg } from '../util/errors.js';
import { TAG_CELL, type ReconcileContext } from './context.js';

/**
 * Terminates instances that carry this controller's ID but that the store does not know (or
 * knows as Terminated): leftovers of a crash between launch and the store write, or of a
 * store that was wiped. Cells are recorded before they are launched, so a live record always
 * exists for an instance being launched. Returns the instances terminated.
 */
export async function collectGarbage(ctx: ReconcileContext): Promise<string[]> {
  const pruned = await pruneSavedLogs(ctx.o.store, ctx.o.savedLogs?.retainSeconds ?? DEFAULT_RETAIN_SECONDS).catch((err: unknown) => {
    ctx.log.warn({ err: errMsg(err) }, 'pruning saved logs failed');
    return 0;
  });
  if (pruned) ctx.log.info({ pruned }, 'saved logs pruned');
  const { o } = ctx;
  // Tokens of cells that never booted in time: their records go too.
  if (o.tokens && o.provider.needsBootstrap) await o.tokens.sweepExpired().catch((err: unknown) => ctx.log.warn({ err: errMsg(err) }, 'bootstrap token sweep failed'));
  const owned = await o.provider.listOwned(o.controllerId);
  const orphans: string[] = [];
  for (const inst of owned) {
    if (inst.state === 'terminated') continue;
    const id = inst.tags[TAG_CELL];
    const c = id ? ctx.cache.cells.get(id) : undefined;
    if (c && c.cell.state !== CellState.CELL_STATE_TERMINATED) continue;
    // Re-read from the store: the cache may lag a record written a moment ago.
    if (id && (await o.store.get(cellKey(id)))) {
      const fresh = await o.store.get<CellRecord>(cellKey(id));
      if (fresh && cellOf(fresh.value).state !== CellState.CELL_STATE_TERMINATED) continue;
    }
    orphans.push(inst.instanceId);
  }
  if (orphans.length) {
    ctx.log.warn({ instances: orphans }, 'terminating instances this controller owns but has no record of');
    await o.provider.terminate(orphans);
    ctx.metrics.garbageCollected.inc(orphans.length);
    for (const i of orphans) await ctx.events.record({ kind: 'Cell', name: i, type: 'Warning', reason: 'GarbageCollected', message: `instance ${i} had no cell record` });
  }
  if (o.provider.collectUnused) {
    const removed = await o.provider.collectUnused(o.controllerId).catch((err: unknown) => {
      ctx.log.warn({ err: errMsg(err) }, 'collecting unused provider resources failed');
      return [];
    });
    if (removed.length) ctx.log.info({ removed }, 'removed provider resources no cell uses');
  }
  return orphans;
}
