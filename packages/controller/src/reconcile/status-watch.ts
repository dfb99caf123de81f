// One WatchStatus stream per live cell. Its messages are the cell's health (a stream open, or
// heard from within healthSeconds) and carry the agent's pod status, its events, and notices
// from the cloud (a spot interruption moves the pod at once).
import type { ClientReadableStream } from '@grpc/grpc-js';
import { CellNoticeKind, WatchStatusRequest, type CellNotice, type WatchStatusEvent } from '@cello/proto/cell';
import type { Cell } from '@cello/proto/controller';
import { refKey, splitKey } from '../cells/schema.js';
import { CellState } from '../cells/state.js';
import { errMsg } from '../util/errors.js';
import type { ReconcileContext } from './context.js';
import { applyAgentStatus, detachPod } from './pod-status.js';
import { transition } from './transition.js';

interface Watcher {
  call?: ClientReadableStream<WatchStatusEvent>;
  open: boolean;
  lastSeen: number;
  address: string;
  retry?: NodeJS.Timeout;
  closed: boolean;
  /** The agent's messages, handled one at a time in the order they came. */
  chain: Promise<void>;
  /** The newest status not handled yet (a burst of statuses is one write: the last). */
  nextStatus?: WatchStatusEvent;
}

export class StatusWatch {
  private readonly watchers = new Map<string, Watcher>();
  private stopped = false;

  constructor(private readonly ctx: ReconcileContext) {}

  /**
   * For the periodic health check: whether the cell needs a reconcile (no stream yet, or one
   * silent for longer than healthSeconds). An open stream counts as heard from now.
   */
  needsLook(id: string, now: number): boolean {
    const w = this.watchers.get(id);
    if (!w) return true;
    if (w.open) w.lastSeen = now;
    else if (now - w.lastSeen > this.ctx.t.healthSeconds * 1000) return true;
    return false;
  }

  /** Starts the cell's stream if it has none; true if it has one that has been silent too long. */
  ensure(id: string, address: string): boolean {
    const w = this.watchers.get(id);
    if (!w) {
      this.start(id, address);
      return false;
    }
    return !w.open && Date.now() - w.lastSeen > this.ctx.t.healthSeconds * 1000;
  }

  start(id: string, address: string): void {
    if (!address) return;
    const existing = this.watchers.get(id);
    if (existing && existing.address === address && !existing.closed) return;
    if (existing) this.stop(id);
    const w: Watcher = { open: false, lastSeen: Date.now(), address, closed: false, chain: Promise.resolve() };
    this.watchers.set(id, w);
    const connect = () => {
      if (w.closed || this.stopped) return;
      const client = this.ctx.o.agents.get(id, address);
      const call = client.watchStatus(WatchStatusRequest.fromPartial({})) as ClientReadableStream<WatchStatusEvent>;
      w.call = call;
      call.on('data', (ev: WatchStatusEvent) => {
        w.open = true;
        w.lastSeen = Date.now();
        this.deliver(id, w, ev);
      });
      call.on('metadata', () => {
        w.open = true;
        w.lastSeen = Date.now();
      });
      const again = () => {
        if (w.open) w.lastSeen = Date.now();
        w.open = false;
        if (w.closed || this.stopped) return;
        w.retry = setTimeout(connect, 500);
        w.retry.unref();
      };
      call.on('error', again);
      call.on('end', again);
    };
    connect();
  }

  stop(id: string): void {
    const w = this.watchers.get(id);
    if (!w) return;
    w.closed = true;
    if (w.retry) clearTimeout(w.retry);
    w.call?.cancel();
    this.watchers.delete(id);
  }

  stopAll(): void {
    this.stopped = true;
    for (const [id] of this.watchers) this.stop(id);
  }

  /**
   * Handled in order, one at a time: two statuses handled side by side could land in the store
   * out of order (the older one losing its compare-and-swap to the newer, then retrying on top
   * of it), leaving a pod shown as ContainerCreating after it had started. Statuses that pile
   * up while one is written collapse into the newest, which says everything the others did.
   */
  private deliver(id: string, w: Watcher, ev: WatchStatusEvent): void {
    const handle = (e: WatchStatusEvent) => this.onAgentEvent(id, e).catch((err) => this.ctx.log.warn({ cell: id, err: errMsg(err) }, 'status update failed'));
    if (ev.kind?.$case !== 'status') {
      w.chain = w.chain.then(() => handle(ev));
      return;
    }
    const queued = w.nextStatus !== undefined;
    w.nextStatus = ev;
    if (queued) return;
    w.chain = w.chain.then(() => {
      const latest = w.nextStatus!;
      w.nextStatus = undefined;
      return handle(latest);
    });
  }

  private async onAgentEvent(id: string, ev: WatchStatusEvent): Promise<void> {
    const ctx = this.ctx;
    const c = ctx.cache.cells.get(id);
    if (!c) return;
    const cell = c.cell;
    if (ev.kind?.$case === 'notice') return this.onNotice(id, cell, ev.kind.value);
    if (!cell.pod?.name || cell.state !== CellState.CELL_STATE_BOUND) return;
    const key = refKey(cell.pod);
    const k = ev.kind;
    if (!k) return;
    if (k.$case === 'status') {
      const s = k.value;
      if (!s.status) return;
      const podRec = ctx.cache.pods.get(key);
      if (!podRec) return;
      const uid = ctx.cache.podObject(podRec).metadata?.uid;
      if (s.podUid && uid && s.podUid !== uid) return;
      if (s.generation === 0) {
        // The agent has no pod (restarted, or not yet dispatched): make sure it gets one.
        if ((c.rec.appliedGeneration ?? 0) > 0) await ctx.cache.writeCell(id, (r) => (r ? { ...r, appliedGeneration: 0 } : undefined));
        ctx.enqueue(`pod:${key}`);
        return;
      }
      const { becameRunning, created } = await applyAgentStatus(ctx, key, id, cell.address, s);
      if (becameRunning && created) ctx.metrics.podStartSeconds.observe((Date.now() - created.getTime()) / 1000);
      ctx.enqueue(`pod:${key}`);
    } else if (k.$case === 'event') {
      const e = k.value;
      const [ns, name] = splitKey(key);
      void ctx.note({
        kind: 'Pod',
        namespace: ns,
        name,
        type: e.type === 'Warning' ? 'Warning' : 'Normal',
        reason: e.reason,
        message: e.message,
        container: e.container,
        source: id,
        time: e.time ?? new Date(),
      });
    }
  }

  /**
   * The cloud says this instance is going away (a spot interruption: about two minutes' notice).
   * The pod moves now, while its containers can still stop gracefully: the cell drains, and the
   * pod is started again on a new cell, whatever its restart policy, as it was not the pod that
   * failed. A warm cell is simply replaced. Other notices are recorded as events only.
   */
  private async onNotice(id: string, cell: Cell, n: CellNotice): Promise<void> {
    const ctx = this.ctx;
    const when = n.actionAt ? ` at ${n.actionAt.toISOString()}` : '';
    const message = `${n.action || 'notice'}${when}${n.detail ? `: ${n.detail}` : ''}`;
    await ctx.events.record({ kind: 'Cell', name: id, type: 'Warning', reason: 'CellNotice', message });
    if (n.kind !== CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION) return;
    ctx.log.warn({ cell: id, message }, 'instance interrupted: moving its pod to a new cell');
    if (cell.state === CellState.CELL_STATE_BOUND && cell.pod?.name) {
      const [ns, name] = splitKey(refKey(cell.pod));
      await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'SpotInterruption', message: `cell ${id}: ${message}; moving the pod to a new cell` });
      await transition(ctx, id, CellState.CELL_STATE_DRAINING, 'SpotInterruption', message);
      await detachPod(ctx, cell, 'SpotInterruption', message, true, true);
    } else if (cell.state === CellState.CELL_STATE_READY || cell.state === CellState.CELL_STATE_BOOTING) {
      await transition(ctx, id, CellState.CELL_STATE_TERMINATING, 'SpotInterruption', message);
    }
  }
}
