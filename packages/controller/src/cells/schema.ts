// What the controller keeps in the store about pods, cells and events, and typed repositories
// over the Store interface. Values are plain JSON (proto messages go through toJSON/fromJSON),
// so every backend stores them the same way.
import { randomUUID } from 'node:crypto';
import { Cell, ClusterEvent, PodObject, type PodRef } from '@cello/proto/controller';
import { ConflictError, type KeyValue, type Store } from '../store/store.js';
import { CellState } from './state.js';
import type { PodProgressRecord } from './progress.js';

export const PODS = 'pods/';
export const CELLS = 'cells/';
export const EVENTS = 'events/';

export interface PodRecord {
  /** PodObject.toJSON(): metadata, spec, status, cellId, instanceType, nodeName. */
  object: unknown;
  /** Set by DeletePod: the controller stops the pod and ends its cell, then removes the record. */
  deleting?: { requestedAt: string; graceSeconds?: number };
  /** Cells this pod lost (agent silent, cell failed); bounds replacement loops. */
  cellFailures?: number;
  /**
   * Restarts that happened on cells this pod lost, by container: a new cell's agent counts from
   * zero, and the pod's restartCount must not go backwards.
   */
  restartBase?: Record<string, number>;
  /** lastState of each container when its cell was lost. */
  lastStates?: Record<string, unknown>;
  /** Why the pod has no cell yet, for its PodScheduled condition. */
  unschedulable?: { reason: string; message: string };
  /** Where the pod is on its way to running: stage, deadline, attempts, last error (cells/progress.ts). */
  progress?: PodProgressRecord;
}

export interface CellRecord {
  /** Cell.toJSON(). */
  cell: unknown;
  /** Created to keep the warm pool topped up (not for a specific pod). */
  warm: boolean;
  /** Generation of the pod last accepted by this cell's agent. */
  appliedGeneration?: number;
  /** Remaining candidates for capacity fallback while Creating: [type, spot]. */
  fallback?: Array<[string, boolean]>;
  /** Grace period for Draining. */
  graceSeconds?: number;
  /** Set once the pod on this cell ended (Succeeded/Failed): the cell is released after retention. */
  podFinishedAt?: string;
  /** Images a warm cell pre-pulled (reconcile/pre-pull.ts). */
  prePulled?: string[];
}

export function podKey(ns: string, name: string): string {
  return `${PODS}${ns}/${name}`;
}
export function cellKey(id: string): string {
  return `${CELLS}${id}`;
}
export function refKey(ref: PodRef): string {
  return `${ref.namespace || 'default'}/${ref.name}`;
}
/** A pod's reference from its metadata (an empty namespace is `default`). */
export function refOf(p: { metadata?: { namespace: string; name: string } }): PodRef {
  return { namespace: p.metadata?.namespace || 'default', name: p.metadata?.name ?? '' };
}
/** `namespace/name` (a refKey) back into its two parts. */
export function splitKey(key: string): [string, string] {
  const i = key.indexOf('/');
  return [key.slice(0, i), key.slice(i + 1)];
}

export function podOf(r: PodRecord): PodObject {
  return PodObject.fromJSON(r.object);
}
export function cellOf(r: CellRecord): Cell {
  return Cell.fromJSON(r.cell);
}

export function newCellId(): string {
  return `cell-${randomUUID().slice(0, 13).replace('-', '')}`;
}

/** Reads, applies fn, writes with compare-and-swap; retries on conflict. fn returning undefined skips the write. */
export async function update<T>(
  store: Store,
  key: string,
  fn: (cur: T | undefined) => T | undefined | Promise<T | undefined>,
  attempts = 20,
): Promise<{ value: T | undefined; revision: number } | undefined> {
  for (let i = 0; i < attempts; i++) {
    const cur = await store.get<T>(key);
    const next = await fn(cur?.value);
    if (next === undefined) return cur ? { value: cur.value, revision: cur.modRevision } : undefined;
    try {
      const revision = await store.put(key, next, { expectRevision: cur?.modRevision ?? 0 });
      return { value: next, revision };
    } catch (err) {
      if (err instanceof ConflictError) continue;
      throw err;
    }
  }
  throw new Error(`update of ${key}: too many conflicting writers`);
}

export class Events {
  private seq = 0;
  constructor(
    private readonly store: Store,
    private readonly source = 'controller',
  ) {}

  async record(e: {
    kind: 'Pod' | 'Cell';
    namespace?: string;
    name: string;
    type?: 'Normal' | 'Warning';
    reason: string;
    message: string;
    container?: string;
    source?: string;
    time?: Date;
  }): Promise<void> {
    const time = e.time ?? new Date();
    const ev = ClusterEvent.fromPartial({
      time,
      type: e.type ?? 'Normal',
      reason: e.reason,
      message: e.message,
      kind: e.kind,
      name: e.name,
      namespace: e.namespace ?? '',
      source: e.source ?? this.source,
      count: 1,
      container: e.container ?? '',
    });
    const scope = e.kind === 'Pod' ? `pod/${e.namespace ?? 'default'}/${e.name}` : `cell/${e.name}`;
    // Time first so a prefix list returns events in order; the sequence breaks ties.
    const id = `${time.getTime().toString().padStart(15, '0')}-${(this.seq++ % 1e6).toString().padStart(6, '0')}`;
    await this.store.put(`${EVENTS}${scope}/${id}`, ClusterEvent.toJSON(ev));
  }

  async list(ref?: PodRef, limit = 0): Promise<ClusterEvent[]> {
    return this.listUnder(eventsPrefix(ref ? { pod: ref } : {}), limit);
  }

  /** Under eventsPrefix(): one pod's, one cell's, or all. */
  async listUnder(prefix: string, limit = 0): Promise<ClusterEvent[]> {
    const { items } = await this.store.list<unknown>(prefix);
    const evs = items.map((kv: KeyValue<unknown>) => ClusterEvent.fromJSON(kv.value));
    evs.sort((a, b) => (a.time?.getTime() ?? 0) - (b.time?.getTime() ?? 0));
    return limit > 0 ? evs.slice(-limit) : evs;
  }

  async forget(ref: PodRef): Promise<void> {
    const { items } = await this.store.list(`${EVENTS}pod/${ref.namespace || 'default'}/${ref.name}/`);
    for (const kv of items) await this.store.delete(kv.key);
  }
}

/** Where a pod's or a cell's events are kept (all events without either). */
export function eventsPrefix(of: { pod?: PodRef; cell?: string }): string {
  if (of.pod?.name) return `${EVENTS}pod/${of.pod.namespace || 'default'}/${of.pod.name}/`;
  if (of.cell) return `${EVENTS}cell/${of.cell}/`;
  return EVENTS;
}

export function isLive(state: CellState): boolean {
  return state !== CellState.CELL_STATE_TERMINATED;
}
