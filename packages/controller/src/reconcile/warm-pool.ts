// Keeps the configured number of unbound cells of each warm-pool type launching or Ready, so a
// pod can start on one at once. A type whose warm cell failed is left alone for a while.
import { Cell } from '@cello/proto/controller';
import { newCellId } from '../cells/schema.js';
import { CellState, deadlineFor } from '../cells/state.js';
import type { ReconcileContext } from './context.js';

const FAILED_TYPE_PAUSE_MS = 15_000;

export class WarmPool {
  private busy = false;
  /** Instance types whose last warm launch failed, and until when: no relaunch loop on a broken type. */
  private readonly backoff = new Map<string, number>();

  constructor(private readonly ctx: ReconcileContext) {}

  /** A warm cell of this type failed. */
  failed(instanceType: string): void {
    this.backoff.set(instanceType, Date.now() + FAILED_TYPE_PAUSE_MS);
  }

  async topUp(): Promise<void> {
    const ctx = this.ctx;
    if (this.busy || !ctx.o.warmPool?.length) return;
    this.busy = true;
    try {
      for (const w of ctx.o.warmPool) {
        if ((this.backoff.get(w.instanceType) ?? 0) > Date.now()) continue;
        let have = 0;
        for (const c of ctx.cache.cells.values()) {
          const cell = c.cell;
          if (cell.instanceType !== w.instanceType || cell.pod?.name) continue;
          if (cell.state === CellState.CELL_STATE_CREATING || cell.state === CellState.CELL_STATE_BOOTING || cell.state === CellState.CELL_STATE_READY) have++;
        }
        for (let i = have; i < w.size; i++) {
          const t = ctx.types().find((x) => x.name === w.instanceType)!;
          const id = newCellId();
          const at = new Date();
          const cell = Cell.fromPartial({
            id,
            state: CellState.CELL_STATE_CREATING,
            provider: ctx.o.provider.name,
            instanceType: w.instanceType,
            spot: !!w.spot,
            hourlyPrice: w.spot ? (t.spotHourlyUsd ?? t.onDemandHourlyUsd) : t.onDemandHourlyUsd,
            createdAt: at,
            stateSince: at,
            reason: 'WarmPool',
            message: `keeping ${w.size} ready ${w.instanceType} cells`,
            deadline: deadlineFor(CellState.CELL_STATE_CREATING, at, ctx.t),
          });
          await ctx.cache.writeCell(id, (cur) => (cur ? undefined : { cell: Cell.toJSON(cell), warm: true }));
          ctx.enqueue(`cell:${id}`);
        }
      }
    } finally {
      this.busy = false;
    }
  }
}
