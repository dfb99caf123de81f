// The reconciler's view of the store: every pod and cell record, fed by the store's watch (and
// a relist when the watch breaks), parsed once per revision, with the two indexes scheduling
// needs. Writes go through here too, as compare-and-swap against the cached revision, so the
// cache never lags what this process wrote.
import { type Cell, type PodObject } from '@cello/proto/controller';
import { ConflictError, type Store, type WatchEvent } from '../store/store.js';
import { CELLS, PODS, cellKey, cellOf, podKey, podOf, refKey, splitKey, update, type CellRecord, type PodRecord } from '../cells/schema.js';
import { CellState } from '../cells/state.js';
import type { Logger } from '../obs/logger.js';

export interface Cached<T> {
  rec: T;
  rev: number;
  /** The pod record's object, parsed once per revision (read-only: writes go through writePod). */
  pod?: PodObject;
}

export interface CachedCell extends Cached<CellRecord> {
  cell: Cell;
}

/**
 * The cells this controller knows, each parsed once, with the two indexes scheduling needs
 * (cells by pod, Ready unbound cells by type) so placing a pod does not scan every cell.
 */
export class CellCache {
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
    if (c.cell.pod?.name) add(this.byPod, refKey(c.cell.pod), id);
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
    if (old.cell.pod?.name) remove(this.byPod, refKey(old.cell.pod), id);
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

export class RecordCache {
  /** Pods by `namespace/name`. */
  readonly pods = new Map<string, Cached<PodRecord>>();
  readonly cells = new CellCache();

  /** `changed` gets `pod:<ns/name>` or `cell:<id>` for every record the watch changes. */
  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly changed: (key: string) => void,
  ) {}

  /** Lists pods and cells, then follows both prefixes from the listed revisions until `signal` aborts. */
  async load(signal: AbortSignal): Promise<void> {
    const pods = await this.store.list<PodRecord>(PODS);
    for (const kv of pods.items) this.pods.set(kv.key.slice(PODS.length), { rec: kv.value, rev: kv.modRevision });
    const cells = await this.store.list<CellRecord>(CELLS);
    for (const kv of cells.items) this.cells.set(kv.key.slice(CELLS.length), { rec: kv.value, rev: kv.modRevision });
    void this.follow<PodRecord>(PODS, pods.revision, signal, (k, v, rev) => this.onPodEvent(k, v, rev));
    void this.follow<CellRecord>(CELLS, cells.revision, signal, (k, v, rev) => this.onCellEvent(k, v, rev));
  }

  /** The cached pod parsed (once per cached revision); callers must not change it. */
  podObject(c: Cached<PodRecord>): PodObject {
    return (c.pod ??= podOf(c.rec));
  }

  /** `get` reads the value (lazily: a revision the cache already has is never parsed); undefined for a delete. */
  private async follow<T>(prefix: string, fromRev: number, signal: AbortSignal, on: (key: string, get: (() => T) | undefined, rev: number) => void): Promise<void> {
    let after = fromRev;
    while (!signal.aborted) {
      try {
        for await (const ev of this.store.watch<T>(prefix, { afterRevision: after, signal }) as AsyncIterable<WatchEvent<T>>) {
          after = ev.revision;
          if (ev.type === 'put') {
            const kv = ev.kv;
            on(kv.key.slice(prefix.length), () => kv.value, kv.modRevision);
          } else on(ev.key.slice(prefix.length), undefined, ev.revision);
        }
      } catch (err) {
        if (signal.aborted) return;
        this.log.warn({ err: String(err), prefix }, 'store watch failed; relisting');
        try {
          const l = await this.store.list<T>(prefix);
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
    this.changed(`pod:${k}`);
  }

  private onCellEvent(k: string, get: (() => CellRecord) | undefined, rev: number): void {
    const cur = this.cells.get(k);
    if (cur && cur.rev >= rev && get !== undefined) return;
    if (get === undefined) this.cells.delete(k);
    else this.cells.set(k, { rec: get(), rev });
    this.changed(`cell:${k}`);
  }

  async writePod(key: string, fn: (r: PodRecord) => PodRecord | undefined): Promise<PodRecord | undefined> {
    const [ns, name] = splitKey(key);
    const fast = await this.casFromCache(podKey(ns, name), this.pods.get(key), fn);
    const res = fast ?? (await update<PodRecord>(this.store, podKey(ns, name), (cur) => (cur ? fn(cur) : undefined)));
    if (res?.value) {
      const c = this.pods.get(key);
      if (!c || c.rev < res.revision) this.pods.set(key, { rec: res.value, rev: res.revision });
    }
    return res?.value;
  }

  async writeCell(id: string, fn: (r: CellRecord | undefined) => CellRecord | undefined): Promise<CellRecord | undefined> {
    const fast = await this.casFromCache(cellKey(id), this.cells.get(id), fn);
    const res = fast ?? (await update<CellRecord>(this.store, cellKey(id), (cur) => fn(cur)));
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
      const revision = await this.store.put(storeKey, next, { expectRevision: cached.rev });
      return { value: next, revision };
    } catch (err) {
      if (err instanceof ConflictError) return undefined;
      throw err;
    }
  }
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
  if (r.progress) r.progress = structuredClone(r.progress);
  return r as T;
}
