// The controller's reconciler: it drives every pod to a cell and every cell through its
// lifecycle. State lives in the store (so a controller killed at any point resumes where it
// was); this process keeps a cache fed by the store's watch (record-cache.ts), a keyed work
// queue (one task per pod or cell at a time, retries with per-key back-off), and one
// WatchStatus stream per live cell whose heartbeats are the cell's health (status-watch.ts).
// Side effects (launch, ApplyPod, terminate) are idempotent and always follow the store write
// that announces them, so a crash between the two is repaired by doing them again.
//
// This file is the orchestrator: start/stop, the queue, and the periodic tick (deadlines,
// health, resync, warm pool, GC, certificate renewal, gauges). What each key's reconcile does
// lives in pods.ts (with scheduler.ts) and cell-lifecycle.ts (with cell-bootstrap.ts).
import type { InstanceType } from '../providers/provider.js';
import { Events, type PodRecord } from '../cells/schema.js';
import { CellState, DEFAULT_TIMEOUTS, stateName, type Timeouts } from '../cells/state.js';
import type { Logger } from '../obs/logger.js';
import { Metrics } from '../obs/metrics.js';
import { WorkQueue } from '../util/workqueue.js';
import { errMsg } from '../util/errors.js';
import { CellBootstrap } from './cell-bootstrap.js';
import { CellLifecycle } from './cell-lifecycle.js';
import type { ReconcileContext, ReconcilerOptions } from './context.js';
import { collectGarbage } from './gc.js';
import { reconcilePod } from './pods.js';
import { RecordCache, type Cached, type CellCache } from './record-cache.js';
import { StatusWatch } from './status-watch.js';
import { WarmPool } from './warm-pool.js';
import { PrePull } from './pre-pull.js';
import { backoffDelay } from '../util/backoff.js';

export { TAG_CELL, TAG_CONTROLLER, TAG_POD, type BootstrapFn, type ReconcilerOptions, type WarmPoolEntry } from './context.js';

/** Every pod is looked at again once per this period (a safety net besides the watch). */
const RESYNC_MS = 30_000;
/** A key's retries back off from the delay its caller asks for up to this many times it. */
const RETRY_MAX_FACTOR = 16;
const RETRY_MAX_MS = 30_000;

export class Reconciler {
  readonly events: Events;
  readonly metrics: Metrics;
  private readonly cache: RecordCache;
  private readonly ctx: ReconcileContext;
  private readonly queue: WorkQueue;
  private readonly watch: StatusWatch;
  private readonly lifecycle: CellLifecycle;
  private readonly warmPool: WarmPool;
  private readonly abort = new AbortController();
  /** Retries each key has asked for in a row (its back-off), and the keys that asked during their current run. */
  private readonly retries = new Map<string, number>();
  private readonly retriedThisRun = new Set<string>();
  private types: InstanceType[] = [];
  private tick?: NodeJS.Timeout;
  private lastGc = 0;
  private lastResync = 0;
  /** Where the periodic resync of pods continues on the next tick. */
  private resyncCursor: Iterator<string> | undefined;
  private resyncBudget = 0;
  private active = 0;
  private stopped = false;

  constructor(private readonly o: ReconcilerOptions) {
    const t: Timeouts = { ...DEFAULT_TIMEOUTS, ...(o.timeouts ?? {}) };
    this.events = new Events(o.store);
    this.metrics = o.metrics ?? new Metrics();
    this.cache = new RecordCache(o.store, o.log, (key) => this.enqueue(key));
    this.queue = new WorkQueue(
      (key) => this.run(key),
      (key, err) => this.log.error({ err: errMsg(err), key }, 'reconcile failed'),
      { workers: o.concurrency ?? 32 },
    );
    this.ctx = {
      o,
      t,
      cache: this.cache,
      events: this.events,
      metrics: this.metrics,
      log: o.log,
      startedAt: Date.now(),
      types: () => this.types,
      prePull: new PrePull(),
      enqueue: (key) => this.enqueue(key),
      retryLater: (key, baseMs) => this.retryLater(key, baseMs),
      enqueueAfter: (key, ms) => this.queue.addAfter(key, ms),
      note: (e) => this.events.record(e).catch((err: unknown) => this.log.debug({ err: errMsg(err), reason: e.reason }, 'event not recorded')),
    };
    this.watch = new StatusWatch(this.ctx);
    this.warmPool = new WarmPool(this.ctx);
    this.lifecycle = new CellLifecycle(this.ctx, this.watch, new CellBootstrap(this.ctx), this.warmPool);
  }

  /** Pods by `namespace/name`, as the store's watch last delivered them. */
  get pods(): Map<string, Cached<PodRecord>> {
    return this.cache.pods;
  }

  get cells(): CellCache {
    return this.cache.cells;
  }

  private get log(): Logger {
    return this.o.log;
  }

  async start(): Promise<void> {
    this.types = await this.o.provider.instanceTypes();
    for (const w of this.o.warmPool ?? []) {
      if (!this.types.some((t) => t.name === w.instanceType)) {
        throw new Error(`warmPool: instanceType "${w.instanceType}" is not offered by provider ${this.o.provider.name}`);
      }
    }
    await this.cache.load(this.abort.signal);
    for (const k of this.pods.keys()) this.enqueue(`pod:${k}`);
    for (const k of this.cells.keys()) this.enqueue(`cell:${k}`);
    const tickMs = this.o.tickMs ?? 1000;
    this.tick = setInterval(() => this.onTick(), tickMs);
    this.tick.unref();
    this.onTick();
    this.log.info({ pods: this.pods.size, cells: this.cells.size }, 'reconciler started');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    if (this.tick) clearInterval(this.tick);
    this.watch.stopAll();
    this.o.serviceFeed?.stopAll();
    this.queue.stop();
    const deadline = Date.now() + 10_000;
    while (this.active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** Resolves when the queue is empty (for benchmarks and tests). */
  idle(): Promise<void> {
    return this.queue.idle();
  }

  enqueue(key: string): void {
    if (this.stopped) return;
    this.queue.add(key);
    // Waiting keys only (the queue's length counts running ones too).
    this.metrics.queueDepth.set(this.queue.length - this.active);
  }

  /** Terminates instances this controller owns that the store has no live cell for (gc.ts). */
  collectGarbage(): Promise<string[]> {
    return collectGarbage(this.ctx);
  }

  /** One reconcile of a key; errors are logged, not retried (the tick's resync looks again). */
  private async run(key: string): Promise<void> {
    this.active++;
    const started = process.hrtime.bigint();
    const kind = key.startsWith('pod:') ? 'pod' : 'cell';
    this.retriedThisRun.delete(key);
    try {
      await (kind === 'pod' ? reconcilePod(this.ctx, key.slice(4)) : this.lifecycle.reconcile(key.slice(5)));
    } catch (err) {
      this.log.error({ err: errMsg(err), key }, 'reconcile failed');
    } finally {
      this.metrics.reconcileSeconds.observe({ kind }, Number(process.hrtime.bigint() - started) / 1e9);
      if (!this.retriedThisRun.delete(key)) this.retries.delete(key);
      this.metrics.queueDepth.set(this.queue.length - this.active);
      this.active--;
    }
  }

  /** Looks at the key again after `baseMs`, doubling for each retry in a row (up to RETRY_MAX_FACTOR times). */
  private retryLater(key: string, baseMs: number): void {
    const n = (this.retries.get(key) ?? 0) + 1;
    this.retries.set(key, n);
    this.retriedThisRun.add(key);
    this.queue.addAfter(key, backoffDelay({ baseMs, maxMs: Math.min(baseMs * RETRY_MAX_FACTOR, RETRY_MAX_MS) }, n));
  }

  private onTick(): void {
    if (this.stopped) return;
    const t = Date.now();
    // Deadlines and health.
    for (const [id, c] of this.cells) {
      const cell = c.cell;
      if (cell.deadline && cell.deadline.getTime() <= t) this.enqueue(`cell:${id}`);
      if (cell.state === CellState.CELL_STATE_READY || cell.state === CellState.CELL_STATE_BOUND) {
        if (this.watch.needsLook(id, t)) this.enqueue(`cell:${id}`);
      }
      if (cell.state === CellState.CELL_STATE_TERMINATED || (c.rec.podFinishedAt && cell.state === CellState.CELL_STATE_BOUND)) {
        this.enqueue(`cell:${id}`);
      }
    }
    this.resyncSlice(t);
    if (this.o.renewer) this.o.renewer.check(this.renewable());
    this.warmPool.topUp().catch((err) => this.log.warn({ err: errMsg(err) }, 'warm pool top-up failed'));
    const gcEvery = (this.o.gcIntervalSeconds ?? 30) * 1000;
    if (t - this.lastGc > gcEvery) {
      this.lastGc = t;
      this.collectGarbage().catch((err) => this.log.warn({ err: errMsg(err) }, 'garbage collection failed'));
    }
    this.updateGauges();
  }

  /** Cells whose agent serves mTLS and will keep doing so: their certificates must stay fresh. */
  private *renewable(): Iterable<{ id: string; address: string }> {
    for (const [id, c] of this.cells) {
      const st = c.cell.state;
      if ((st === CellState.CELL_STATE_READY || st === CellState.CELL_STATE_BOUND || st === CellState.CELL_STATE_DRAINING) && c.cell.address) {
        yield { id, address: c.cell.address };
      }
    }
  }

  /**
   * A safety net besides the watch: every pod is looked at again once per RESYNC_MS. Spread over
   * the ticks in slices rather than all at once — enqueueing every pod in one go put thousands
   * of reconciles in front of the real work every few seconds at scale.
   */
  private resyncSlice(t: number): void {
    const tickMs = this.o.tickMs ?? 1000;
    const elapsed = Math.max(tickMs, t - (this.lastResync || t - tickMs));
    this.lastResync = t;
    // Fractional shares carry over, so a few pods are not looked at on every tick either.
    this.resyncBudget = Math.min(this.pods.size, this.resyncBudget + (this.pods.size * elapsed) / RESYNC_MS);
    let n = Math.floor(this.resyncBudget);
    this.resyncBudget -= n;
    while (n-- > 0 && this.pods.size > 0) {
      this.resyncCursor ??= this.pods.keys();
      const next = this.resyncCursor.next();
      if (next.done) {
        this.resyncCursor = undefined;
        // One pass per period at most, even when there are few pods.
        break;
      }
      this.enqueue(`pod:${next.value}`);
    }
  }

  private updateGauges(): void {
    const byState = new Map<string, number>();
    for (const c of this.cells.values()) {
      const s = stateName(c.cell.state);
      byState.set(s, (byState.get(s) ?? 0) + 1);
    }
    this.metrics.cells.reset();
    for (const [s, n] of byState) this.metrics.cells.set({ state: s }, n);
  }
}
