// The controller's reconciler: it drives every pod to a cell and every cell through its
// lifecycle. State lives in the store (so a controller killed at any point resumes where it
// was); this process keeps a cache fed by the store's watch, a keyed work queue (one task per
// pod or cell at a time), and one WatchStatus stream per live cell whose heartbeats are the
// cell's health. Side effects (launch, ApplyPod, terminate) are idempotent and always follow the
// store write that announces them, so a crash between the two is repaired by doing them again.
import type { ClientReadableStream, ServiceError } from '@grpc/grpc-js';
import {
  ApplyPodRequest,
  ConfigMapData,
  DeletePodRequest,
  GetInfoRequest,
  PodPhase,
  PodStatus,
  RestartPolicy,
  SecretData,
  WatchStatusRequest,
  type AgentInfo,
  type ApplyPodResponse,
  type PodCondition,
  type WatchStatusEvent,
  CellNoticeKind,
  ConditionStatus,
  ContainerState,
  type CellNotice,
  type Pod,
} from '@cello/proto/cell';
import { Cell, PodObject, type PodRef } from '@cello/proto/controller';
import { ConflictError, type Store, type WatchEvent, type Leadership } from '../store/store.js';
import { CapacityError, type CellProvider, type InstanceType, type CellBootstrapData } from '../providers/provider.js';
import {
  CELLS,
  PODS,
  Events,
  cellKey,
  cellOf,
  newCellId,
  podKey,
  podOf,
  update,
  type CellRecord,
  type PodRecord,
} from '../cells/records.js';
import { CellState, DEFAULT_TIMEOUTS, canTransition, deadlineFor, stateName, timeoutReason, type Timeouts } from '../cells/state.js';
import { SelectionError, selectCandidates, type Overhead, type SpotPreference } from '../selection/selection.js';
import type { Logger } from '../obs/logger.js';
import { Metrics } from '../obs/metrics.js';
import { callUnary, type AgentAccess } from './agents.js';
import { readPodSecrets, type PodRecordWithData } from '../cells/pod-secrets.js';
import type { SealedSecrets, SecretBox } from '../security/secret-box.js';
import { BootstrapTokenError, type BootstrapTokens } from '../security/tokens.js';
import { randomBytes } from 'node:crypto';

export const TAG_CONTROLLER = 'cello.io/controller-id';
export const TAG_CELL = 'cello.io/cell-id';
export const TAG_POD = 'cello.io/pod';

export interface WarmPoolEntry {
  instanceType: string;
  size: number;
  spot?: boolean;
}

/** Bootstraps a cell that needs it (remote providers): prove the token, sign its CSR, install. */
export type BootstrapFn = (args: { address: string; token: string; cellId: string; caPem: string }) => Promise<void>;

export interface ReconcilerOptions {
  store: Store;
  provider: CellProvider;
  controllerId: string;
  agents: AgentAccess;
  log: Logger;
  metrics?: Metrics;
  warmPool?: WarmPoolEntry[];
  timeouts?: Partial<Timeouts>;
  overhead?: Overhead;
  defaultSpot?: SpotPreference;
  /** Seconds a finished pod's cell is kept (for logs) before it is released. */
  retainFinishedSeconds?: number;
  /** Cells a pod may lose before it is failed instead of rescheduled. */
  maxCellFailures?: number;
  gcIntervalSeconds?: number;
  tickMs?: number;
  concurrency?: number;
  /** Agent port reported in bootstrap data (remote providers). */
  agentPort?: number;
  bootstrap?: BootstrapFn;
  caCertPem?: () => Promise<string>;
  /** Seals/opens the secrets kept in pod records (absent: plaintext, insecure-dev without a key). */
  secretBox?: SecretBox;
  /**
   * Outstanding bootstrap tokens, hashed in the store. With these (and secretBox) a cell's token
   * is issued here, kept in its record only sealed, checked before it is presented again, and
   * consumed once the cell has its certificate — so a restarted controller can finish the
   * bootstrap of a cell an earlier one launched.
   */
  tokens?: BootstrapTokens;
  /** Renews cells' certificates before expiry (mTLS); checked on every tick. */
  renewer?: { check(cells: Iterable<{ id: string; address: string }>): void; forget(cellId: string): void };
}

interface Cached<T> {
  rec: T;
  rev: number;
  /** The pod record's object, parsed once per revision (read-only: writes go through writePod). */
  pod?: PodObject;
}

interface Watcher {
  call?: ClientReadableStream<WatchStatusEvent>;
  open: boolean;
  lastSeen: number;
  address: string;
  retry?: NodeJS.Timeout;
  closed: boolean;
}

interface CachedCell extends Cached<CellRecord> {
  cell: Cell;
}

/**
 * The cells this controller knows, each parsed once, with the two indexes scheduling needs
 * (cells by pod, Ready unbound cells by type) so placing a pod does not scan every cell.
 */
class CellCache {
  private readonly m = new Map<string, CachedCell>();
  private readonly byPod = new Map<string, Set<string>>();
  private readonly free = new Map<string, Set<string>>();

  get size(): number {
    return this.m.size;
  }
  get(id: string): CachedCell | undefined {
    return this.m.get(id);
  }
  keys(): IterableIterator<string> {
    return this.m.keys();
  }
  values(): IterableIterator<CachedCell> {
    return this.m.values();
  }
  [Symbol.iterator](): IterableIterator<[string, CachedCell]> {
    return this.m[Symbol.iterator]();
  }
  set(id: string, v: Cached<CellRecord>): void {
    this.unindex(id);
    const c: CachedCell = { ...v, cell: cellOf(v.rec) };
    this.m.set(id, c);
    if (c.cell.pod?.name) add(this.byPod, refStr(c.cell.pod), id);
    else if (c.cell.state === CellState.CELL_STATE_READY) add(this.free, c.cell.instanceType, id);
  }
  delete(id: string): void {
    this.unindex(id);
    this.m.delete(id);
  }
  forPod(key: string): string[] {
    return [...(this.byPod.get(key) ?? [])];
  }
  readyFree(instanceType: string): string[] {
    return [...(this.free.get(instanceType) ?? [])];
  }
  private unindex(id: string): void {
    const old = this.m.get(id);
    if (!old) return;
    if (old.cell.pod?.name) remove(this.byPod, refStr(old.cell.pod), id);
    remove(this.free, old.cell.instanceType, id);
  }
}

function add(m: Map<string, Set<string>>, k: string, v: string): void {
  let s = m.get(k);
  if (!s) m.set(k, (s = new Set()));
  s.add(v);
}
function remove(m: Map<string, Set<string>>, k: string, v: string): void {
  const s = m.get(k);
  if (!s) return;
  s.delete(v);
  if (s.size === 0) m.delete(k);
}

const TERMINAL = new Set([PodPhase.POD_PHASE_SUCCEEDED, PodPhase.POD_PHASE_FAILED]);

function now(): Date {
  return new Date();
}

export function refOf(p: { metadata?: { namespace: string; name: string } }): PodRef {
  return { namespace: p.metadata?.namespace || 'default', name: p.metadata?.name ?? '' };
}

function refStr(r: PodRef): string {
  return `${r.namespace || 'default'}/${r.name}`;
}

export function setCondition(status: PodStatus, type: string, value: ConditionStatus, reason = '', message = ''): void {
  const c = status.conditions.find((x) => x.type === type);
  if (c) {
    if (c.status !== value) c.lastTransitionTime = now();
    c.status = value;
    c.reason = reason;
    c.message = message;
    return;
  }
  const cond: PodCondition = { type, status: value, reason, message, lastTransitionTime: now(), lastProbeTime: undefined };
  status.conditions.push(cond);
}

export class Reconciler {
  readonly pods = new Map<string, Cached<PodRecord>>();
  readonly cells = new CellCache();
  readonly events: Events;
  readonly metrics: Metrics;
  private readonly t: Timeouts;
  private readonly queue = new Set<string>();
  private readonly running = new Set<string>();
  private readonly again = new Set<string>();
  private readonly watchers = new Map<string, Watcher>();
  private readonly inflight = new Map<string, Promise<unknown>>();
  private readonly abort = new AbortController();
  private types: InstanceType[] = [];
  private tick?: NodeJS.Timeout;
  private lastGc = 0;
  private lastResync = 0;
  /** Where the periodic resync of pods continues on the next tick. */
  private resyncCursor: Iterator<string> | undefined;
  private resyncBudget = 0;
  private readonly startedAt = Date.now();
  private active = 0;
  private stopped = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly o: ReconcilerOptions) {
    this.t = { ...DEFAULT_TIMEOUTS, ...(o.timeouts ?? {}) };
    this.events = new Events(o.store);
    this.metrics = o.metrics ?? new Metrics();
  }

  /**
   * Records an event without making the reconcile wait for it: events are for people reading
   * `describe`, and waiting on each one cost every state change a second store commit.
   */
  private note(e: Parameters<Events['record']>[0]): Promise<void> {
    return this.events.record(e).catch((err: unknown) => this.log.debug({ err: errMsg(err), reason: e.reason }, 'event not recorded'));
  }

  private get log(): Logger {
    return this.o.log;
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    this.types = await this.o.provider.instanceTypes();
    for (const w of this.o.warmPool ?? []) {
      if (!this.types.some((t) => t.name === w.instanceType)) {
        throw new Error(`warmPool: instanceType "${w.instanceType}" is not offered by provider ${this.o.provider.name}`);
      }
    }
    const pods = await this.o.store.list<PodRecord>(PODS);
    for (const kv of pods.items) this.pods.set(kv.key.slice(PODS.length), { rec: kv.value, rev: kv.modRevision });
    const cells = await this.o.store.list<CellRecord>(CELLS);
    for (const kv of cells.items) this.cells.set(kv.key.slice(CELLS.length), { rec: kv.value, rev: kv.modRevision });
    void this.follow<PodRecord>(PODS, pods.revision, (k, v, rev) => this.onPodEvent(k, v, rev));
    void this.follow<CellRecord>(CELLS, cells.revision, (k, v, rev) => this.onCellEvent(k, v, rev));
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
    for (const [id] of this.watchers) this.stopWatch(id);
    const deadline = Date.now() + 10_000;
    while (this.active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** Resolves when the queue is empty (for benchmarks and tests). */
  idle(): Promise<void> {
    if (this.queue.size === 0 && this.active === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** `get` reads the value (lazily: a revision the cache already has is never parsed); undefined for a delete. */
  private async follow<T>(prefix: string, fromRev: number, on: (key: string, get: (() => T) | undefined, rev: number) => void): Promise<void> {
    let after = fromRev;
    while (!this.stopped) {
      try {
        for await (const ev of this.o.store.watch<T>(prefix, { afterRevision: after, signal: this.abort.signal }) as AsyncIterable<WatchEvent<T>>) {
          after = ev.revision;
          if (ev.type === 'put') {
            const kv = ev.kv;
            on(kv.key.slice(prefix.length), () => kv.value, kv.modRevision);
          }
          else on(ev.key.slice(prefix.length), undefined, ev.revision);
        }
      } catch (err) {
        if (this.stopped) return;
        this.log.warn({ err: String(err), prefix }, 'store watch failed; relisting');
        try {
          const l = await this.o.store.list<T>(prefix);
          const seen = new Set<string>();
          for (const kv of l.items) {
            const k = kv.key.slice(prefix.length);
            seen.add(k);
            on(k, () => kv.value, kv.modRevision);
          }
          const cache = prefix === PODS ? this.pods : this.cells;
          for (const k of [...cache.keys()]) if (!seen.has(k)) on(k, undefined, l.revision);
          after = l.revision;
        } catch {
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    }
  }

  private onPodEvent(k: string, get: (() => PodRecord) | undefined, rev: number): void {
    const cur = this.pods.get(k);
    if (cur && cur.rev >= rev && get !== undefined) return;
    if (get === undefined) this.pods.delete(k);
    else this.pods.set(k, { rec: get(), rev });
    this.enqueue(`pod:${k}`);
  }

  private onCellEvent(k: string, get: (() => CellRecord) | undefined, rev: number): void {
    const cur = this.cells.get(k);
    if (cur && cur.rev >= rev && get !== undefined) return;
    if (get === undefined) this.cells.delete(k);
    else this.cells.set(k, { rec: get(), rev });
    this.enqueue(`cell:${k}`);
  }

  // ---------------------------------------------------------------- queue

  enqueue(key: string): void {
    if (this.stopped) return;
    if (this.running.has(key)) {
      this.again.add(key);
      return;
    }
    this.queue.add(key);
    this.metrics.queueDepth.set(this.queue.size);
    this.pump();
  }

  private pump(): void {
    const max = this.o.concurrency ?? 32;
    while (this.active < max && this.queue.size > 0) {
      const key = this.queue.values().next().value as string;
      this.queue.delete(key);
      this.running.add(key);
      this.active++;
      const started = process.hrtime.bigint();
      const kind = key.startsWith('pod:') ? 'pod' : 'cell';
      const task = kind === 'pod' ? this.reconcilePod(key.slice(4)) : this.reconcileCell(key.slice(5));
      task
        .catch((err: unknown) => this.log.error({ err: errMsg(err), key }, 'reconcile failed'))
        .finally(() => {
          this.metrics.reconcileSeconds.observe({ kind }, Number(process.hrtime.bigint() - started) / 1e9);
          this.active--;
          this.running.delete(key);
          if (this.again.delete(key)) this.queue.add(key);
          this.metrics.queueDepth.set(this.queue.size);
          if (this.queue.size === 0 && this.active === 0) {
            const w = this.idleWaiters;
            this.idleWaiters = [];
            for (const r of w) r();
          }
          this.pump();
        });
    }
  }

  private onTick(): void {
    if (this.stopped) return;
    const t = Date.now();
    // Deadlines and health.
    for (const [id, c] of this.cells) {
      const cell = c.cell;
      if (cell.deadline && cell.deadline.getTime() <= t) this.enqueue(`cell:${id}`);
      if (cell.state === CellState.CELL_STATE_READY || cell.state === CellState.CELL_STATE_BOUND) {
        const w = this.watchers.get(id);
        if (!w) this.enqueue(`cell:${id}`);
        else if (w.open) w.lastSeen = t;
        else if (t - w.lastSeen > this.t.healthSeconds * 1000) this.enqueue(`cell:${id}`);
      }
      if (cell.state === CellState.CELL_STATE_TERMINATED || (c.rec.podFinishedAt && cell.state === CellState.CELL_STATE_BOUND)) {
        this.enqueue(`cell:${id}`);
      }
    }
    this.resyncSlice(t);
    if (this.o.renewer) this.o.renewer.check(this.renewable());
    this.topUpWarmPool().catch((err) => this.log.warn({ err: errMsg(err) }, 'warm pool top-up failed'));
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
    const RESYNC_MS = 30_000;
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

  // ---------------------------------------------------------------- writes

  private async writePod(key: string, fn: (r: PodRecord) => PodRecord | undefined): Promise<PodRecord | undefined> {
    const [ns, name] = splitKey(key);
    const fast = await this.casFromCache(podKey(ns, name), this.pods.get(key), fn);
    const res = fast ?? (await update<PodRecord>(this.o.store, podKey(ns, name), (cur) => (cur ? fn(cur) : undefined)));
    if (res?.value) {
      const c = this.pods.get(key);
      if (!c || c.rev < res.revision) this.pods.set(key, { rec: res.value, rev: res.revision });
    }
    return res?.value;
  }

  private async writeCell(id: string, fn: (r: CellRecord | undefined) => CellRecord | undefined): Promise<CellRecord | undefined> {
    const fast = await this.casFromCache(cellKey(id), this.cells.get(id), fn);
    const res = fast ?? (await update<CellRecord>(this.o.store, cellKey(id), (cur) => fn(cur)));
    if (res?.value) {
      const c = this.cells.get(id);
      if (!c || c.rev < res.revision) this.cells.set(id, { rec: res.value, rev: res.revision });
    }
    return res?.value;
  }

  /**
   * One compare-and-swap against the revision the cache holds, skipping the read: at scale a
   * read-then-write costs two store round trips (two group commits) per change. Undefined when
   * the cache has nothing, the change is a no-op (decided on possibly stale data, so the caller
   * re-checks against the store), or someone wrote in between; the caller then does the
   * read-modify-write loop. (The store returns fresh copies on read, so only cached records
   * need copying before fn mutates them: see copyRecord.)
   */
  private async casFromCache<T>(storeKey: string, cached: Cached<T> | undefined, fn: (r: T) => T | undefined): Promise<{ value: T; revision: number } | undefined> {
    if (!cached) return undefined;
    const next = fn(copyRecord(cached.rec));
    if (next === undefined) return undefined;
    try {
      const revision = await this.o.store.put(storeKey, next, { expectRevision: cached.rev });
      return { value: next, revision };
    } catch (err) {
      if (err instanceof ConflictError) return undefined;
      throw err;
    }
  }

  /** Moves a cell to `to` if the state machine allows it from where it is now. */
  private async transition(
    id: string,
    to: CellState,
    reason: string,
    message: string,
    patch: (c: Cell, r: CellRecord) => void = () => undefined,
    expectFrom?: CellState[],
  ): Promise<CellRecord | undefined> {
    let moved = false;
    const rec = await this.writeCell(id, (r) => {
      moved = false; // fn may run more than once (a lost compare-and-swap is retried)
      if (!r) return undefined;
      const c = cellOf(r);
      if (expectFrom && !expectFrom.includes(c.state)) return undefined;
      if (c.state !== to && !canTransition(c.state, to)) return undefined;
      const at = now();
      if (c.state !== to) {
        c.stateSince = at;
        moved = true;
      }
      c.state = to;
      c.reason = reason;
      c.message = message;
      c.deadline = deadlineFor(to, at, this.t, r.graceSeconds ?? 30);
      patch(c, r);
      r.cell = Cell.toJSON(c);
      return r;
    });
    if (moved && rec) {
      this.log.info({ cell: id, state: stateName(to), reason }, 'cell state');
      const warn = /Timeout|Lost|Failed|Error/.test(reason);
      void this.events
        .record({ kind: 'Cell', name: id, type: warn ? 'Warning' : 'Normal', reason: reason || stateName(to), message: message || stateName(to) })
        .catch(() => undefined);
      this.enqueue(`cell:${id}`);
    }
    return moved ? rec : undefined;
  }

  // ---------------------------------------------------------------- pods

  private async reconcilePod(key: string): Promise<void> {
    const cached = this.pods.get(key);
    if (!cached) return;
    const rec = cached.rec;
    const pod = this.podObject(cached);
    const ref = refOf(pod);
    const cellC = pod.cellId ? this.cells.get(pod.cellId) : undefined;
    const cell = cellC?.cell;
    const cellLive = cell && cell.state !== CellState.CELL_STATE_TERMINATED && cell.pod?.name === ref.name && (cell.pod?.namespace || 'default') === ref.namespace;

    if (rec.deleting) {
      if (!cellLive || !cell) {
        await this.o.store.delete(podKey(ref.namespace, ref.name));
        this.pods.delete(key);
        await this.events.forget(ref).catch(() => undefined);
        this.log.info({ pod: key }, 'pod deleted');
        return;
      }
      if (cell.state === CellState.CELL_STATE_BOUND || cell.state === CellState.CELL_STATE_READY) {
        await this.writeCell(cell.id, (r) => (r ? { ...r, graceSeconds: rec.deleting?.graceSeconds ?? graceOf(pod) } : undefined));
        await this.transition(cell.id, CellState.CELL_STATE_DRAINING, 'PodDeleted', `stopping pod ${key}`);
      } else if (cell.state === CellState.CELL_STATE_CREATING || cell.state === CellState.CELL_STATE_BOOTING) {
        await this.transition(cell.id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', `pod ${key} was deleted before its cell was ready`);
      }
      return;
    }

    const phase = pod.status?.phase ?? PodPhase.POD_PHASE_PENDING;
    if (TERMINAL.has(phase)) {
      if (cellLive && cell && !cellC!.rec.podFinishedAt) {
        await this.writeCell(cell.id, (r) => (r ? { ...r, podFinishedAt: now().toISOString() } : undefined));
        this.enqueue(`cell:${cell.id}`);
      }
      return;
    }

    if (!cellLive) {
      await this.schedule(key, pod);
      return;
    }
    if (cell!.state === CellState.CELL_STATE_BOUND && (cellC!.rec.appliedGeneration ?? 0) < (pod.metadata?.generation ?? 1)) {
      await this.dispatch(key, rec, pod, cell!);
    }
  }

  /** Finds a cell for a pod: a Ready one from the warm pool, else a new one. */
  private async schedule(key: string, pod: PodObject): Promise<void> {
    const ref = refOf(pod);
    let candidates;
    try {
      candidates = selectCandidates(this.types, {
        spec: pod.spec!,
        annotations: pod.metadata?.annotations ?? {},
        overhead: this.o.overhead ?? { cpuMillis: 100, memoryBytes: 64 * 1024 * 1024 },
        defaultSpot: this.o.defaultSpot ?? 'never',
      });
    } catch (err) {
      if (!(err instanceof SelectionError)) throw err;
      await this.markUnschedulable(key, err.reason, err.message);
      return;
    }
    const annotations = pod.metadata?.annotations ?? {};
    const refused = this.o.provider.refusePod?.({ namespace: ref.namespace, annotations });
    if (refused) {
      await this.markUnschedulable(key, 'NotAllowed', refused);
      return;
    }
    // A warm cell was launched without this pod's launch-time settings (its role, its disk).
    const launchOptions = this.launchOptions(annotations);
    // A cell already created for this pod (crash between the two writes below) is adopted.
    for (const id of this.cells.forPod(refStr(ref))) {
      const cell = this.cells.get(id)!.cell;
      if (cell.pod && refStr(cell.pod) === refStr(ref) && cell.state !== CellState.CELL_STATE_TERMINATED && cell.state !== CellState.CELL_STATE_TERMINATING && cell.state !== CellState.CELL_STATE_DRAINING) {
        await this.bindPod(key, id, cell.instanceType, 'adopted');
        return;
      }
    }
    // Warm pool: cheapest candidate type first.
    for (const cand of Object.keys(launchOptions).length ? [] : candidates) {
      for (const id of this.cells.readyFree(cand.type.name)) {
        const cell = this.cells.get(id)!.cell;
        if (cell.state !== CellState.CELL_STATE_READY || cell.pod?.name || cell.instanceType !== cand.type.name) continue;
        if (cand.spot !== cell.spot && (this.o.defaultSpot === 'required' || pod.metadata?.annotations['cello.io/spot'] === 'required')) continue;
        const claimed = await this.transition(
          id,
          CellState.CELL_STATE_BOUND,
          'Bound',
          `bound to pod ${refStr(ref)}`,
          (cl) => {
            cl.pod = ref;
          },
          [CellState.CELL_STATE_READY],
        );
        if (!claimed) continue; // someone else took it
        await this.bindPod(key, id, cell.instanceType, 'warm pool');
        return;
      }
    }
    // A new cell, launched for this pod.
    const first = candidates[0]!;
    const id = newCellId();
    const at = now();
    const cell = Cell.fromPartial({
      id,
      state: CellState.CELL_STATE_CREATING,
      provider: this.o.provider.name,
      instanceType: first.type.name,
      pod: ref,
      spot: first.spot,
      hourlyPrice: first.hourlyUsd,
      createdAt: at,
      stateSince: at,
      reason: 'Launching',
      message: `launching ${first.type.name}${first.spot ? ' (spot)' : ''} for pod ${refStr(ref)}`,
      deadline: deadlineFor(CellState.CELL_STATE_CREATING, at, this.t),
    });
    await this.writeCell(id, (cur) =>
      cur ? undefined : { cell: Cell.toJSON(cell), warm: false, fallback: candidates.slice(1).map((c) => [c.type.name, c.spot] as [string, boolean]) },
    );
    await this.bindPod(key, id, first.type.name, 'new cell');
    this.enqueue(`cell:${id}`);
  }

  /** The pod's annotations the provider applies at launch (LaunchRequest.options). */
  private launchOptions(annotations: Record<string, string>): Record<string, string> {
    const keys = this.o.provider.launchAnnotations ?? [];
    return Object.fromEntries(Object.entries(annotations).filter(([k]) => keys.includes(k)));
  }

  private async bindPod(key: string, cellId: string, instanceType: string, how: string): Promise<void> {
    const rec = await this.writePod(key, (r) => {
      const p = podOf(r);
      p.cellId = cellId;
      p.instanceType = instanceType;
      p.nodeName = cellId;
      const st = p.status ?? PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
      setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_TRUE, '', '');
      p.status = st;
      r.object = PodObject.toJSON(p);
      delete r.unschedulable;
      return r;
    });
    if (!rec) return;
    const ref = splitKey(key);
    void this.note({ kind: 'Pod', namespace: ref[0], name: ref[1], reason: 'Scheduled', message: `assigned to cell ${cellId} (${instanceType}, ${how})` });
    this.enqueue(`pod:${key}`);
  }

  private async markUnschedulable(key: string, reason: string, message: string): Promise<void> {
    const cur = this.pods.get(key)?.rec;
    if (cur?.unschedulable?.reason === reason && cur.unschedulable.message === message) return;
    await this.writePod(key, (r) => {
      const p = podOf(r);
      const st = p.status ?? PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
      setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, 'Unschedulable', `${reason}: ${message}`);
      p.status = st;
      r.object = PodObject.toJSON(p);
      r.unschedulable = { reason, message };
      return r;
    });
    const [ns, name] = splitKey(key);
    await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'FailedScheduling', message: `${reason}: ${message}` });
  }

  private async dispatch(key: string, rec: PodRecord, pod: PodObject, cell: Cell): Promise<void> {
    if (!cell.address) return;
    const generation = pod.metadata?.generation ?? 1;
    const client = this.o.agents.get(cell.id, cell.address);
    const agentPod: Pod = {
      metadata: {
        name: pod.metadata!.name,
        namespace: pod.metadata!.namespace,
        uid: pod.metadata!.uid,
        labels: pod.metadata!.labels,
        annotations: pod.metadata!.annotations,
        creationTimestamp: pod.metadata!.creationTimestamp,
      },
      spec: pod.spec,
    };
    const req = ApplyPodRequest.fromPartial({
      pod: agentPod,
      generation,
      secrets: Object.fromEntries(Object.entries(readPodSecrets(rec as PodRecordWithData, podKey(...splitKey(key)), this.o.secretBox)).map(([k, v]) => [k, SecretData.fromJSON(v)])),
      configMaps: Object.fromEntries(Object.entries((rec as PodRecordWithData).configMaps ?? {}).map(([k, v]) => [k, ConfigMapData.fromJSON(v)])),
    });
    try {
      const res = await callUnary<ApplyPodResponse>(client, 'applyPod', req, 60_000);
      await this.writeCell(cell.id, (r) => (r ? { ...r, appliedGeneration: Math.max(r.appliedGeneration ?? 0, res.generation || generation) } : undefined));
      const [ns, name] = splitKey(key);
      void this.note({ kind: 'Pod', namespace: ns, name, reason: 'Dispatched', message: `generation ${generation} applied on cell ${cell.id}` });
    } catch (err) {
      const e = err as ServiceError;
      this.log.warn({ pod: key, cell: cell.id, err: errMsg(err) }, 'ApplyPod failed');
      const [ns, name] = splitKey(key);
      // INVALID_ARGUMENT / FAILED_PRECONDITION: the agent refuses this spec; retrying will not help.
      if (e.code === 3 || e.code === 9) {
        await this.writePod(key, (r) => {
          const p = podOf(r);
          const st = p.status ?? PodStatus.fromPartial({});
          st.phase = PodPhase.POD_PHASE_FAILED;
          st.reason = 'ApplyRefused';
          st.message = e.details || e.message;
          p.status = st;
          r.object = PodObject.toJSON(p);
          return r;
        });
        await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'ApplyRefused', message: e.details || e.message });
      } else {
        await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'DispatchFailed', message: errMsg(err) }).catch(() => undefined);
        setTimeout(() => this.enqueue(`pod:${key}`), 1000).unref();
      }
    }
  }

  // ---------------------------------------------------------------- cells

  private async reconcileCell(id: string): Promise<void> {
    const cached = this.cells.get(id);
    if (!cached) {
      this.stopWatch(id);
      return;
    }
    const rec = cached.rec;
    const cell = cached.cell; // parsed once per revision by the cache; read-only here
    const overdue = cell.deadline !== undefined && cell.deadline.getTime() <= Date.now();
    switch (cell.state) {
      case CellState.CELL_STATE_CREATING:
        if (overdue) return void (await this.fail(id, cell, timeoutReason(cell.state), `no instance after ${this.t.createSeconds}s`));
        if (this.podGone(cell)) return void (await this.transition(id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', 'its pod is gone'));
        return this.once(`launch:${id}`, () => this.launch(id, rec, cell));
      case CellState.CELL_STATE_BOOTING:
        if (overdue) return void (await this.fail(id, cell, timeoutReason(cell.state), `agent did not answer within ${this.t.bootSeconds}s`));
        if (this.podGone(cell)) return void (await this.transition(id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', 'its pod is gone'));
        return this.once(`boot:${id}`, () => this.boot(id, cell));
      case CellState.CELL_STATE_READY:
      case CellState.CELL_STATE_BOUND: {
        const w = this.watchers.get(id);
        if (!w) this.startWatch(id, cell.address);
        else if (!w.open && Date.now() - w.lastSeen > this.t.healthSeconds * 1000) {
          return this.lost(id, cell, `agent silent for more than ${this.t.healthSeconds}s`);
        }
        if (cell.state === CellState.CELL_STATE_BOUND) {
          if (this.podGone(cell)) {
            await this.transition(id, CellState.CELL_STATE_DRAINING, 'PodDeleted', 'its pod is gone');
            return;
          }
          const key = refStr(cell.pod!);
          const pod = this.pods.get(key);
          if (rec.podFinishedAt && Date.now() - Date.parse(rec.podFinishedAt) >= (this.o.retainFinishedSeconds ?? 300) * 1000) {
            await this.transition(id, CellState.CELL_STATE_DRAINING, 'PodFinished', `pod ${key} finished; releasing its cell`);
            return;
          }
          if (pod && this.podObject(pod).cellId === id) this.enqueue(`pod:${key}`);
        }
        return;
      }
      case CellState.CELL_STATE_DRAINING:
        if (overdue) return void (await this.transition(id, CellState.CELL_STATE_TERMINATING, timeoutReason(cell.state), 'pod did not stop in time'));
        return this.once(`drain:${id}`, () => this.drain(id, rec, cell));
      case CellState.CELL_STATE_TERMINATING:
        return this.once(`terminate:${id}`, () => this.terminate(id, cell));
      case CellState.CELL_STATE_TERMINATED: {
        this.stopWatch(id);
        if (cell.pod?.name) this.enqueue(`pod:${refStr(cell.pod)}`);
        // Kept briefly so `cellctl get cells` shows how a cell ended.
        if (Date.now() - (cell.stateSince?.getTime() ?? 0) > 30_000) {
          await this.o.store.delete(cellKey(id));
          this.cells.delete(id);
        }
        return;
      }
      default:
        return;
    }
  }

  /** Runs a side effect at most once at a time per key. */
  private async once(key: string, fn: () => Promise<void>): Promise<void> {
    if (this.inflight.has(key)) return;
    const p = fn().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    await p;
  }

  private podGone(cell: Cell): boolean {
    if (!cell.pod?.name) return false;
    const p = this.pods.get(refStr(cell.pod));
    if (!p) return true;
    const po = this.podObject(p);
    // The pod was rebound elsewhere (this cell was presumed lost) or is being deleted.
    return !!p.rec.deleting || (po.cellId !== '' && po.cellId !== cell.id);
  }

  private async launch(id: string, rec: CellRecord, cell: Cell): Promise<void> {
    if (cell.instanceId) {
      await this.transition(id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${cell.instanceId} launched`);
      return;
    }
    // A launch may have happened before a crash: look for the instance by its tag first.
    if (Date.parse(cell.createdAt?.toISOString() ?? '') < this.startedAt) {
      const owned = await this.o.provider.listOwned(this.o.controllerId);
      const found = owned.find((i) => i.tags[TAG_CELL] === id && i.state !== 'terminated');
      if (found) {
        await this.transition(id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${found.instanceId} found after restart`, (c) => {
          c.instanceId = found.instanceId;
          if (found.agentAddress) c.address = found.agentAddress;
        });
        return;
      }
    }
    const tries: Array<[string, boolean]> = [[cell.instanceType, cell.spot], ...(rec.fallback ?? [])];
    const errors: string[] = [];
    for (let i = 0; i < tries.length; i++) {
      const [type, spot] = tries[i]!;
      const ttl = this.t.createSeconds + this.t.bootSeconds;
      const issued = this.sealedTokens() ? await this.o.tokens!.issueBootstrapToken(id, ttl) : { token: randomBytes(24).toString('base64url'), expiresAt: new Date(Date.now() + ttl * 1000) };
      const token = issued.token;
      const bootstrap: CellBootstrapData = {
        caCertPem: (await this.o.caCertPem?.()) ?? '',
        token,
        tokenExpiresAt: issued.expiresAt.toISOString(),
        controllerId: this.o.controllerId,
        cellId: id,
        agentPort: this.o.agentPort ?? 7443,
      };
      const tags: Record<string, string> = { [TAG_CONTROLLER]: this.o.controllerId, [TAG_CELL]: id };
      if (cell.pod?.name) tags[TAG_POD] = refStr(cell.pod);
      const podRec = cell.pod?.name ? this.pods.get(refStr(cell.pod)) : undefined;
      const options = podRec ? this.launchOptions(this.podObject(podRec).metadata?.annotations ?? {}) : {};
      try {
        const inst = await this.o.provider.launch({ cellId: id, instanceType: type, spot, tags, bootstrap, ...(Object.keys(options).length ? { options } : {}) });
        this.metrics.launches.inc({ instance_type: type, outcome: 'ok' });
        const t = this.types.find((x) => x.name === type);
        await this.transition(id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${inst.instanceId} (${type}${inst.spot ? ', spot' : ''}) launched`, (c, r) => {
          c.instanceId = inst.instanceId;
          c.instanceType = type;
          c.spot = inst.spot;
          c.zone = inst.zone ?? '';
          if (t) c.hourlyPrice = inst.spot ? t.spotHourlyUsd ?? t.onDemandHourlyUsd : t.onDemandHourlyUsd;
          r.fallback = tries.slice(i + 1);
          // The token proves this cell's identity once; kept (sealed when possible) only until
          // the cell is bootstrapped, so a restarted controller can present it again.
          delete (r as CellRecordWithToken).bootstrapToken;
          delete (r as CellRecordWithToken).sealedBootstrapToken;
          if (this.o.provider.needsBootstrap) {
            if (this.sealedTokens()) (r as CellRecordWithToken).sealedBootstrapToken = this.o.secretBox!.seal({ token }, cellKey(id));
            else (r as CellRecordWithToken).bootstrapToken = token;
          }
        });
        if (cell.pod?.name && type !== cell.instanceType) {
          await this.writePod(refStr(cell.pod), (r) => {
            const p = podOf(r);
            if (p.cellId !== id) return undefined;
            p.instanceType = type;
            r.object = PodObject.toJSON(p);
            return r;
          });
        }
        return;
      } catch (err) {
        const capacity = err instanceof CapacityError;
        this.metrics.launches.inc({ instance_type: type, outcome: capacity ? 'capacity' : 'error' });
        errors.push(`${type}${spot ? ' (spot)' : ''}: ${errMsg(err)}`);
        this.log.warn({ cell: id, instanceType: type, err: errMsg(err) }, capacity ? 'no capacity; trying next candidate' : 'launch failed');
        if (!capacity) break;
      }
    }
    await this.fail(id, cell, 'LaunchFailed', errors.join('; '));
  }

  private async boot(id: string, cell: Cell): Promise<void> {
    let address = cell.address;
    if (!address) {
      const [info] = await this.o.provider.describe([cell.instanceId]);
      if (!info) return void (await this.fail(id, cell, 'InstanceGone', `instance ${cell.instanceId} no longer exists`));
      if (info.state === 'terminated' || info.state === 'shutting-down' || info.state === 'stopped') {
        return void (await this.fail(id, cell, 'InstanceGone', `instance ${cell.instanceId} is ${info.state}`));
      }
      if (!info.agentAddress) return this.retryLater(`cell:${id}`, 1000);
      address = info.agentAddress;
      await this.writeCell(id, (r) => {
        if (!r) return undefined;
        const c = cellOf(r);
        c.address = address!;
        r.cell = Cell.toJSON(c);
        return r;
      });
    }
    const rec = this.cells.get(id)?.rec as CellRecordWithToken | undefined;
    const token = rec ? this.bootstrapTokenOf(id, rec) : undefined;
    if (this.o.provider.needsBootstrap && token) {
      if (!this.o.bootstrap) return void (await this.fail(id, cell, 'BootstrapUnavailable', 'provider needs bootstrap but none is configured'));
      const done = await this.resumeBootstrap(id, cell, address, token);
      if (done === 'retry') return this.retryLater(`cell:${id}`, 1000);
      if (done === 'failed') return;
    }
    const client = this.o.agents.get(id, address);
    let info: AgentInfo;
    try {
      info = await callUnary<AgentInfo>(client, 'getInfo', GetInfoRequest.fromPartial({}), 2000);
    } catch {
      return this.retryLater(`cell:${id}`, 200);
    }
    if (info.cellId && info.cellId !== id) {
      return void (await this.fail(id, cell, 'WrongCell', `agent at ${address} says it is cell ${info.cellId}`));
    }
    const bound = !!cell.pod?.name;
    await this.transition(
      id,
      bound ? CellState.CELL_STATE_READY : CellState.CELL_STATE_READY,
      'AgentReady',
      `agent ${info.version || ''} answered at ${address}`.replace('  ', ' '),
      undefined,
      [CellState.CELL_STATE_BOOTING],
    );
    if (bound) {
      await this.transition(id, CellState.CELL_STATE_BOUND, 'Bound', `bound to pod ${refStr(cell.pod!)}`, undefined, [CellState.CELL_STATE_READY]);
      this.enqueue(`pod:${refStr(cell.pod!)}`);
    }
    this.startWatch(id, address);
  }

  /** The cached pod parsed (once per cached revision); callers must not change it. */
  private podObject(c: Cached<PodRecord>): PodObject {
    return (c.pod ??= podOf(c.rec));
  }

  private sealedTokens(): boolean {
    return this.o.tokens !== undefined && this.o.secretBox !== undefined;
  }

  /** The cell's bootstrap token, if its bootstrap is not finished (sealed, or plaintext from before). */
  private bootstrapTokenOf(id: string, rec: CellRecordWithToken): string | undefined {
    if (rec.sealedBootstrapToken && this.o.secretBox) return String(this.o.secretBox.open(rec.sealedBootstrapToken, cellKey(id))['token']);
    return rec.bootstrapToken;
  }

  /**
   * Bootstraps a cell, or finishes the bootstrap an earlier controller began: if the agent already
   * answers mTLS as this cell (the other controller installed the certificate, then died), there
   * is nothing left to do; otherwise the token — still outstanding, not expired — is presented
   * again (the agent repeats its CSR for the same key until a certificate is installed).
   */
  private async resumeBootstrap(id: string, cell: Cell, address: string, token: string): Promise<'done' | 'retry' | 'failed'> {
    const inherited = Date.parse(cell.createdAt?.toISOString() ?? '') < this.startedAt;
    let installed = false;
    if (inherited) {
      installed = await callUnary<AgentInfo>(this.o.agents.get(id, address), 'getInfo', GetInfoRequest.fromPartial({}), 2000).then(
        (info) => !info.cellId || info.cellId === id,
        () => false,
      );
      // A failed handshake leaves the channel backing off; start the next one afresh.
      if (!installed) this.o.agents.drop(id);
      else this.log.info({ cell: id }, 'cell was bootstrapped by an earlier controller; adopting it');
    }
    if (!installed) {
      if (this.sealedTokens()) {
        try {
          await this.o.tokens!.verifyBootstrapToken(id, token);
        } catch (err) {
          if (err instanceof BootstrapTokenError && err.reason !== 'used') {
            await this.fail(id, cell, err.reason === 'expired' ? 'BootstrapTokenExpired' : 'BootstrapTokenRevoked', err.message);
            return 'failed';
          }
          throw err;
        }
      }
      try {
        await this.o.bootstrap!({ address, token, cellId: id, caPem: (await this.o.caCertPem?.()) ?? '' });
      } catch (err) {
        this.log.debug({ cell: id, err: errMsg(err) }, 'bootstrap not yet possible');
        return 'retry';
      }
    }
    // The certificate is in place: the token is spent (of two controllers racing, one consumes it).
    if (this.sealedTokens()) {
      await this.o.tokens!.consumeBootstrapToken(id, token).catch((err: unknown) => {
        if (!(err instanceof BootstrapTokenError)) throw err;
      });
    }
    await this.writeCell(id, (r) => {
      if (!r) return undefined;
      delete (r as CellRecordWithToken).bootstrapToken;
      delete (r as CellRecordWithToken).sealedBootstrapToken;
      return r;
    });
    return 'done';
  }

  private retryLater(key: string, ms: number): void {
    setTimeout(() => this.enqueue(key), ms).unref();
  }

  private async fail(id: string, cell: Cell, reason: string, message: string): Promise<void> {
    if (!cell.pod?.name) this.warmBackoff.set(cell.instanceType, Date.now() + 15_000);
    this.log.warn({ cell: id, state: stateName(cell.state), reason, message }, 'cell failed');
    if (cell.pod?.name) {
      const key = refStr(cell.pod);
      const [ns, name] = splitKey(key);
      await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'CellFailed', message: `cell ${id}: ${reason}: ${message}` }).catch(() => undefined);
      if (reason === 'LaunchFailed') await this.markUnschedulable(key, reason, message).catch(() => undefined);
    }
    const to = cell.instanceId ? CellState.CELL_STATE_TERMINATING : CellState.CELL_STATE_TERMINATING;
    await this.transition(id, to, reason, message);
    if (cell.pod?.name) await this.detachPod(cell, reason, message, cell.state === CellState.CELL_STATE_BOUND);
  }

  private async lost(id: string, cell: Cell, message: string): Promise<void> {
    this.metrics.cellsLost.inc();
    this.stopWatch(id);
    this.o.agents.drop(id);
    await this.transition(id, CellState.CELL_STATE_TERMINATING, 'CellLost', message);
    if (cell.pod?.name) {
      const [ns, name] = splitKey(refStr(cell.pod));
      await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'CellLost', message: `cell ${id}: ${message}` });
      await this.detachPod(cell, 'CellLost', message, cell.state === CellState.CELL_STATE_BOUND);
    }
  }

  /**
   * The pod's cell is gone. A pod that never ran is rescheduled. One that ran is handled as the
   * kubelet would a node failure: restartPolicy Never fails it; Always and OnFailure start it
   * again on a new cell (up to maxCellFailures times). An evicted pod (its instance announced
   * its end) always moves.
   */
  private async detachPod(cell: Cell, reason: string, message: string, ran: boolean, evicted = false): Promise<void> {
    const key = refStr(cell.pod!);
    let outcome = '';
    await this.writePod(key, (r) => {
      outcome = ''; // fn may run more than once (a lost compare-and-swap is retried)
      const p = podOf(r);
      if (p.cellId !== cell.id || r.deleting) return undefined;
      const st = p.status ?? PodStatus.fromPartial({});
      if (TERMINAL.has(st.phase)) return undefined;
      const failures = (r.cellFailures ?? 0) + 1;
      r.cellFailures = failures;
      const policy = p.spec?.restartPolicy ?? RestartPolicy.RESTART_POLICY_ALWAYS;
      if ((ran && !evicted && policy === RestartPolicy.RESTART_POLICY_NEVER) || failures > (this.o.maxCellFailures ?? 5)) {
        st.phase = PodPhase.POD_PHASE_FAILED;
        st.reason = reason;
        st.message = `${message}${failures > (this.o.maxCellFailures ?? 5) ? ` (cell lost ${failures} times)` : ''}`;
        setCondition(st, 'Ready', ConditionStatus.CONDITION_STATUS_FALSE, reason, message);
        outcome = 'failed';
      } else {
        st.phase = PodPhase.POD_PHASE_PENDING;
        st.reason = '';
        st.message = `rescheduling after ${reason}`;
        r.restartBase = r.restartBase ?? {};
        r.lastStates = r.lastStates ?? {};
        for (const c of [...st.containerStatuses, ...st.initContainerStatuses]) {
          if (ran) c.restartCount += 1;
          r.restartBase[c.name] = c.restartCount;
          if (c.state) r.lastStates[c.name] = ContainerState.toJSON(c.state);
          c.ready = false;
          c.lastState = c.state;
          c.state = { state: { $case: 'waiting', value: { reason: 'ContainerCreating', message: `new cell after ${reason}` } } };
        }
        setCondition(st, 'Ready', ConditionStatus.CONDITION_STATUS_FALSE, reason, message);
        setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, reason, 'waiting for a new cell');
        p.cellId = '';
        p.nodeName = '';
        outcome = 'rescheduled';
      }
      p.status = st;
      r.object = PodObject.toJSON(p);
      return r;
    });
    if (outcome) {
      const [ns, name] = splitKey(key);
      await this.events.record({
        kind: 'Pod', namespace: ns, name, type: 'Warning',
        reason: outcome === 'failed' ? 'PodFailed' : 'Rescheduling',
        message: outcome === 'failed' ? `${reason}: pod failed (restartPolicy)` : `${reason}: starting the pod on a new cell`,
      });
      this.enqueue(`pod:${key}`);
    }
  }

  private async drain(id: string, rec: CellRecord, cell: Cell): Promise<void> {
    this.stopWatch(id);
    if (cell.address && cell.pod?.name) {
      const grace = rec.graceSeconds ?? 30;
      try {
        await callUnary(this.o.agents.get(id, cell.address), 'deletePod', DeletePodRequest.fromPartial({ gracePeriodSeconds: grace }), (grace + this.t.drainSlackSeconds) * 1000);
      } catch (err) {
        this.log.warn({ cell: id, err: errMsg(err) }, 'agent DeletePod failed; terminating anyway');
      }
    }
    await this.transition(id, CellState.CELL_STATE_TERMINATING, 'Drained', cell.pod?.name ? `pod ${refStr(cell.pod)} stopped` : 'released', undefined, [CellState.CELL_STATE_DRAINING]);
  }

  private async terminate(id: string, cell: Cell): Promise<void> {
    this.stopWatch(id);
    this.o.agents.drop(id);
    this.o.renewer?.forget(id);
    if (this.o.tokens && this.o.provider.needsBootstrap) await this.o.tokens.revoke(id).catch(() => undefined);
    try {
      if (cell.instanceId) await this.o.provider.terminate([cell.instanceId]);
    } catch (err) {
      this.log.warn({ cell: id, err: errMsg(err) }, 'terminate failed; will retry');
      return this.retryLater(`cell:${id}`, 2000);
    }
    await this.transition(id, CellState.CELL_STATE_TERMINATED, cell.reason || 'Terminated', cell.message || 'instance terminated', undefined, [CellState.CELL_STATE_TERMINATING]);
  }

  // ---------------------------------------------------------------- status streams

  private startWatch(id: string, address: string): void {
    if (!address) return;
    const existing = this.watchers.get(id);
    if (existing && existing.address === address && !existing.closed) return;
    if (existing) this.stopWatch(id);
    const w: Watcher = { open: false, lastSeen: Date.now(), address, closed: false };
    this.watchers.set(id, w);
    const connect = () => {
      if (w.closed || this.stopped) return;
      const client = this.o.agents.get(id, address);
      const call = client.watchStatus(WatchStatusRequest.fromPartial({})) as ClientReadableStream<WatchStatusEvent>;
      w.call = call;
      call.on('data', (ev: WatchStatusEvent) => {
        w.open = true;
        w.lastSeen = Date.now();
        this.onAgentEvent(id, ev).catch((err) => this.log.warn({ cell: id, err: errMsg(err) }, 'status update failed'));
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

  private stopWatch(id: string): void {
    const w = this.watchers.get(id);
    if (!w) return;
    w.closed = true;
    if (w.retry) clearTimeout(w.retry);
    w.call?.cancel();
    this.watchers.delete(id);
  }

  private async onAgentEvent(id: string, ev: WatchStatusEvent): Promise<void> {
    const c = this.cells.get(id);
    if (!c) return;
    const cell = c.cell;
    if (ev.kind?.$case === 'notice') return this.onNotice(id, cell, ev.kind.value);
    if (!cell.pod?.name || cell.state !== CellState.CELL_STATE_BOUND) return;
    const key = refStr(cell.pod);
    const k = ev.kind;
    if (!k) return;
    if (k.$case === 'status') {
      const s = k.value;
      if (!s.status) return;
      const podRec = this.pods.get(key);
      if (!podRec) return;
      const uid = this.podObject(podRec).metadata?.uid;
      if (s.podUid && uid && s.podUid !== uid) return;
      if (s.generation === 0) {
        // The agent has no pod (restarted, or not yet dispatched): make sure it gets one.
        if ((c.rec.appliedGeneration ?? 0) > 0) await this.writeCell(id, (r) => (r ? { ...r, appliedGeneration: 0 } : undefined));
        this.enqueue(`pod:${key}`);
        return;
      }
      let becameRunning = false;
      let created: Date | undefined;
      await this.writePod(key, (r) => {
        const p = podOf(r);
        if (p.cellId !== id) return undefined;
        const prev = p.status;
        const st = PodStatus.fromPartial(s.status!);
        for (const c of [...st.containerStatuses, ...st.initContainerStatuses]) {
          c.restartCount += r.restartBase?.[c.name] ?? 0;
          const last = r.lastStates?.[c.name];
          if (!c.lastState?.state && last) c.lastState = ContainerState.fromJSON(last);
        }
        // Keep the controller's own conditions (PodScheduled) alongside the agent's.
        for (const pc of prev?.conditions ?? []) if (!st.conditions.some((x) => x.type === pc.type)) st.conditions.push(pc);
        setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_TRUE);
        if (!st.hostIp && cell.address) st.hostIp = cell.address.split(':')[0] ?? '';
        if (prev?.phase !== PodPhase.POD_PHASE_RUNNING && (st.phase === PodPhase.POD_PHASE_RUNNING || st.phase === PodPhase.POD_PHASE_SUCCEEDED)) {
          becameRunning = true;
          created = p.metadata?.creationTimestamp;
        }
        if (PodStatus.toJSON(st) && JSON.stringify(PodStatus.toJSON(st)) === JSON.stringify(prev ? PodStatus.toJSON(prev) : null)) return undefined;
        p.status = st;
        r.object = PodObject.toJSON(p);
        return r;
      });
      if (becameRunning && created) this.metrics.podStartSeconds.observe((Date.now() - created.getTime()) / 1000);
      this.enqueue(`pod:${key}`);
    } else if (k.$case === 'event') {
      const e = k.value;
      const [ns, name] = splitKey(key);
      void this.note({
        kind: 'Pod', namespace: ns, name,
        type: e.type === 'Warning' ? 'Warning' : 'Normal',
        reason: e.reason, message: e.message, container: e.container, source: id, time: e.time ?? now(),
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
    const when = n.actionAt ? ` at ${n.actionAt.toISOString()}` : '';
    const message = `${n.action || 'notice'}${when}${n.detail ? `: ${n.detail}` : ''}`;
    await this.events.record({ kind: 'Cell', name: id, type: 'Warning', reason: 'CellNotice', message });
    if (n.kind !== CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION) return;
    this.log.warn({ cell: id, message }, 'instance interrupted: moving its pod to a new cell');
    if (cell.state === CellState.CELL_STATE_BOUND && cell.pod?.name) {
      const [ns, name] = splitKey(refStr(cell.pod));
      await this.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'SpotInterruption', message: `cell ${id}: ${message}; moving the pod to a new cell` });
      await this.transition(id, CellState.CELL_STATE_DRAINING, 'SpotInterruption', message);
      await this.detachPod(cell, 'SpotInterruption', message, true, true);
    } else if (cell.state === CellState.CELL_STATE_READY || cell.state === CellState.CELL_STATE_BOOTING) {
      await this.transition(id, CellState.CELL_STATE_TERMINATING, 'SpotInterruption', message);
    }
  }

  // ---------------------------------------------------------------- warm pool and GC

  private warmBusy = false;
  /** Instance types whose last warm launch failed, and when: no relaunch loop on a broken type. */
  private readonly warmBackoff = new Map<string, number>();
  private async topUpWarmPool(): Promise<void> {
    if (this.warmBusy || !this.o.warmPool?.length) return;
    this.warmBusy = true;
    try {
      for (const w of this.o.warmPool) {
        if ((this.warmBackoff.get(w.instanceType) ?? 0) > Date.now()) continue;
        let have = 0;
        for (const c of this.cells.values()) {
          const cell = c.cell;
          if (cell.instanceType !== w.instanceType || cell.pod?.name) continue;
          if (cell.state === CellState.CELL_STATE_CREATING || cell.state === CellState.CELL_STATE_BOOTING || cell.state === CellState.CELL_STATE_READY) have++;
        }
        for (let i = have; i < w.size; i++) {
          const t = this.types.find((x) => x.name === w.instanceType)!;
          const id = newCellId();
          const at = now();
          const cell = Cell.fromPartial({
            id,
            state: CellState.CELL_STATE_CREATING,
            provider: this.o.provider.name,
            instanceType: w.instanceType,
            spot: !!w.spot,
            hourlyPrice: w.spot ? t.spotHourlyUsd ?? t.onDemandHourlyUsd : t.onDemandHourlyUsd,
            createdAt: at,
            stateSince: at,
            reason: 'WarmPool',
            message: `keeping ${w.size} ready ${w.instanceType} cells`,
            deadline: deadlineFor(CellState.CELL_STATE_CREATING, at, this.t),
          });
          await this.writeCell(id, (cur) => (cur ? undefined : { cell: Cell.toJSON(cell), warm: true }));
          this.enqueue(`cell:${id}`);
        }
      }
    } finally {
      this.warmBusy = false;
    }
  }

  /**
   * Terminates instances that carry this controller's ID but that the store does not know (or
   * knows as Terminated): leftovers of a crash between launch and the store write, or of a
   * store that was wiped. Cells are recorded before they are launched, so a live record always
   * exists for an instance being launched.
   */
  async collectGarbage(): Promise<string[]> {
    // Tokens of cells that never booted in time: their records go too.
    if (this.o.tokens && this.o.provider.needsBootstrap) await this.o.tokens.sweepExpired().catch((err: unknown) => this.log.warn({ err: errMsg(err) }, 'bootstrap token sweep failed'));
    const owned = await this.o.provider.listOwned(this.o.controllerId);
    const orphans: string[] = [];
    for (const inst of owned) {
      if (inst.state === 'terminated') continue;
      const id = inst.tags[TAG_CELL];
      const c = id ? this.cells.get(id) : undefined;
      if (c && c.cell.state !== CellState.CELL_STATE_TERMINATED) continue;
      // Re-read from the store: the cache may lag a record written a moment ago.
      if (id && (await this.o.store.get(cellKey(id)))) {
        const fresh = await this.o.store.get<CellRecord>(cellKey(id));
        if (fresh && cellOf(fresh.value).state !== CellState.CELL_STATE_TERMINATED) continue;
      }
      orphans.push(inst.instanceId);
    }
    if (orphans.length) {
      this.log.warn({ instances: orphans }, 'terminating instances this controller owns but has no record of');
      await this.o.provider.terminate(orphans);
      this.metrics.garbageCollected.inc(orphans.length);
      for (const i of orphans) await this.events.record({ kind: 'Cell', name: i, type: 'Warning', reason: 'GarbageCollected', message: `instance ${i} had no cell record` });
    }
    return orphans;
  }
}

export type { PodRecordWithData } from '../cells/pod-secrets.js';

interface CellRecordWithToken extends CellRecord {
  /** Only when the controller has no token store or key (older records, tests). */
  bootstrapToken?: string;
  sealedBootstrapToken?: SealedSecrets;
}

/**
 * A copy of a cached pod or cell record that update functions may change: they replace
 * top-level fields (object, cell, fallback, ...) and fill two small maps in place
 * (restartBase, lastStates), so those are copied and the rest is shared. Cheaper than a deep
 * clone of the whole pod object on every write.
 */
function copyRecord<T>(rec: T): T {
  const r = { ...(rec as Record<string, unknown>) };
  if (r.restartBase) r.restartBase = { ...(r.restartBase as object) };
  if (r.lastStates) r.lastStates = { ...(r.lastStates as object) };
  return r as T;
}

export function splitKey(key: string): [string, string] {
  const i = key.indexOf('/');
  return [key.slice(0, i), key.slice(i + 1)];
}

function graceOf(p: PodObject): number {
  return p.spec?.terminationGracePeriodSeconds ?? 30;
}

export function errMsg(err: unknown): string {
  if (err && typeof err === 'object' && 'details' in err && typeof (err as ServiceError).details === 'string' && (err as ServiceError).details) {
    return (err as ServiceError).details;
  }
  return err instanceof Error ? err.message : String(err);
}

export type { Leadership };
