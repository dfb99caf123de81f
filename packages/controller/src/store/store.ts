// The controller's state lives behind this small key-value interface with revisions, compare-
// and-swap, prefix watches and leader election — the shape etcd offers, so the etcd backend is
// thin and the embedded backend is held to the same semantics. Typed repositories (pods, cells,
// events, the CA) are built on top of it. Every backend passes test/store/contract.ts.

import { CelloError } from '../errors.js';

export interface KeyValue<T = unknown> {
  key: string;
  value: T;
  /** Revision of the last write to this key; increases across the whole store. */
  modRevision: number;
}

export interface PutOptions {
  /** Write only if the key's current modRevision equals this (0: only if absent). */
  expectRevision?: number;
  /**
   * Write only while this leadership (from this store's campaign()) is still held — checked by
   * the store in the same atomic step as the write, so a deposed leader that has not noticed
   * yet (a long pause, a partition) cannot overwrite its successor's work. Throws NotLeaderError.
   */
  leader?: Leadership;
}

export interface DeleteOptions {
  expectRevision?: number;
  /** As PutOptions.leader. */
  leader?: Leadership;
}

export type WatchEvent<T = unknown> = { type: 'put'; kv: KeyValue<T>; revision: number } | { type: 'delete'; key: string; revision: number };

/** Thrown when a compare-and-swap precondition fails. */
export class ConflictError extends CelloError {
  constructor(
    readonly key: string,
    readonly expected: number,
    readonly actual: number,
  ) {
    super('Conflict', `conflict on ${key}: expected revision ${expected}, found ${actual}`);
  }
}

/** Held while this process is the leader; `lost` fires if leadership ends without resign(). */
export interface Leadership {
  readonly candidate: string;
  readonly signal: AbortSignal;
  resign(): Promise<void>;
}

export interface Store {
  readonly kind: 'embedded' | 'etcd';
  get<T>(key: string): Promise<KeyValue<T> | undefined>;
  /** All keys under prefix, sorted by key, with the store revision they were read at. */
  list<T>(prefix: string): Promise<{ items: KeyValue<T>[]; revision: number }>;
  /** Returns the new modRevision. Durable when the promise resolves. */
  put<T>(key: string, value: T, opts?: PutOptions): Promise<number>;
  /** Returns false when the key did not exist. */
  delete(key: string, opts?: DeleteOptions): Promise<boolean>;
  /** Events under prefix after `afterRevision` (default: from now), in order, until signal aborts. */
  watch<T>(prefix: string, opts: { afterRevision?: number; signal: AbortSignal }): AsyncIterable<WatchEvent<T>>;
  /**
   * Blocks until this candidate is the only leader for `name`, then returns. Leadership is kept
   * alive by the store (an etcd lease, a lock on local disk) until resign(), close() or loss.
   */
  campaign(name: string, candidate: string, opts: { ttlSeconds?: number; signal?: AbortSignal }): Promise<Leadership>;
  close(): Promise<void>;
}

/** Thrown by watch() when `afterRevision` is older than the history the store still keeps. */
export class CompactedError extends CelloError {
  constructor(
    readonly requested: number,
    readonly oldest: number,
  ) {
    super('FailedPrecondition', `revision ${requested} has been compacted; the oldest revision a watch can resume after is ${oldest} — list() again and watch from its revision`);
  }
}

/** Thrown by every operation on a store that was closed or failed (the cause says why). */
export class StoreClosedError extends CelloError {
  constructor(readonly why: string) {
    super('Unavailable', `store is closed: ${why}`);
  }
}

/** Thrown for a key or value no store holds: an empty key, a value JSON cannot encode. */
export class InvalidEntryError extends CelloError {
  constructor(message: string) {
    super('InvalidArgument', message);
  }
}

/** Thrown by a write fenced with `leader` when that leadership is no longer held. */
export class NotLeaderError extends CelloError {
  constructor(
    readonly election: string,
    readonly candidate: string,
  ) {
    super('Unavailable', `${candidate} no longer leads ${election}: write refused`);
  }
}
