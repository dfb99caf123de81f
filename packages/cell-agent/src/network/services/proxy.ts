// The cell's Service proxy: keeps the nftables table in the pod's network namespace equal to
// the latest snapshot of Services and EndpointSlices. Updates are coalesced (only the newest
// snapshot matters) and applied one at a time; the first sync, and any sync after a failure,
// replaces the whole table, every other one only what changed.
import type pino from 'pino';
import { runNft, type NftOptions } from './nft.js';
import type { ServiceSnapshot } from './model.js';
import { RenderCache, TABLE, renderServices } from './ruleset.js';
import { fullTransaction, partialTransaction, type Rendered } from './transaction.js';

export interface SyncResult {
  full: boolean;
  /** Lines of the transaction (0: nothing changed). */
  commands: number;
  durationMs: number;
}

export interface ServiceProxyOptions extends NftOptions {
  /** The cell's own addresses: endpoints there are local (traffic policy Local). */
  localAddresses: () => Iterable<string>;
  logger?: pino.Logger;
  onSync?: (r: SyncResult) => void;
  /** Sees each nft transaction before it is applied (tests and debugging: it can be large). */
  onTransaction?: (tx: string, full: boolean) => void;
}

export class ServiceProxy {
  private applied: Rendered | undefined;
  private pending: ServiceSnapshot | undefined;
  private running: Promise<void> | undefined;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closed = false;
  private cache: RenderCache | undefined;
  /** IPv4 forwarding is a property of the namespace: turned on once, not on every full sync. */
  private forwarding = false;

  constructor(private readonly o: ServiceProxyOptions) {}

  /** Makes the rules match `snapshot`; resolves once they (or a newer snapshot's) are in place. */
  sync(snapshot: ServiceSnapshot): Promise<void> {
    if (this.closed) return Promise.reject(new Error('service proxy is closed'));
    this.pending = snapshot;
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.running ??= this.drain();
    return done;
  }

  /**
   * Refuses later syncs once the running one is done. The rules stay: a restarted agent (an
   * upgrade) keeps Services working until its controller resyncs, which replaces the table.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.running;
  }

  /** Removes the table (the pod is gone, or a test is done with its namespace). */
  async remove(): Promise<void> {
    await this.close();
    await runNft(`add table ${TABLE}\ndelete table ${TABLE}\n`, this.o);
    this.applied = undefined;
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      const snapshot = this.pending;
      const waiters = this.waiters;
      this.pending = undefined;
      this.waiters = [];
      try {
        await this.apply(snapshot);
        for (const w of waiters) w.resolve();
      } catch (err) {
        for (const w of waiters) w.reject(err as Error);
      }
    }
    this.running = undefined;
  }

  private async apply(snapshot: ServiceSnapshot): Promise<void> {
    const started = performance.now();
    const local = new Set(this.o.localAddresses());
    if (!this.cache || !sameSet(this.cache.localAddresses, local)) this.cache = new RenderCache(local);
    const next = renderServices(snapshot, local, this.cache);
    const full = this.applied === undefined;
    const tx = full ? fullTransaction(next) : partialTransaction(this.applied!, next);
    if (tx) {
      this.o.onTransaction?.(tx, full);
      try {
        await runNft(tx, { ...this.o, forwarding: !this.forwarding });
        this.forwarding = true;
      } catch (err) {
        // The kernel applied nothing; what is in place is unknown to us only if a previous
        // run was cut short, so the next sync rebuilds the table from scratch.
        this.applied = undefined;
        throw err;
      }
    }
    this.applied = next;
    const r = { full, commands: tx ? tx.split('\n').length - 1 : 0, durationMs: performance.now() - started };
    this.o.logger?.debug(r, 'service rules synced');
    this.o.onSync?.(r);
  }
}

function sameSet(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}
