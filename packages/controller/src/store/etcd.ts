// The HA store: a thin layer over etcd. Revisions are etcd mod revisions, compare-and-swap is an
// etcd transaction on the key's mod revision, watches are etcd watches from a revision, and
// leader election is a key held by a lease:
//   - campaign: create `<prefix>elect/<name>` with our lease only if it does not exist
//     (txn on mod revision 0); otherwise watch the key from the revision we saw and retry when
//     it is deleted (by resign, or by etcd when the holder's lease expires).
//   - loss: the Leadership signal aborts when the key is deleted or overwritten, when the lease
//     is reported lost, and — the safety-critical case — when keepalives have not succeeded for
//     close to the TTL, so a partitioned leader stops acting before etcd can elect another.
// Data keys live under `<prefix>kv/`, election keys under `<prefix>elect/`, so a prefix listing
// of data can never see election bookkeeping.
import type { Registry } from 'prom-client';
import { Etcd3, Range, type IOptions, type Lease, type Namespace, type Watcher } from 'etcd3';
import {
  CompactedError,
  ConflictError,
  NotLeaderError,
  StoreClosedError,
  type DeleteOptions,
  type KeyValue,
  type Leadership,
  type PutOptions,
  type Store,
  type WatchEvent,
} from './store.js';
import { checkEtcdTransport, etcdCredentials, type EtcdTlsOptions } from './etcd-tls.js';
import { StoreMetrics } from './metrics.js';
import { WatchStream } from './watch-stream.js';
import { checkKey, toJson } from './entry.js';
import { backoffDelay, type BackoffPolicy } from '../util/backoff.js';

export interface EtcdStoreOptions {
  endpoints: string[];
  /** Key prefix for everything this controller stores. Default "/cello/". */
  prefix?: string;
  /** Deadline for each unary etcd call, in ms. Default 10,000. */
  requestTimeoutMs?: number;
  /** TLS to etcd from files: its CA, and a client certificate for --client-cert-auth (etcd-tls.ts). */
  tls?: EtcdTlsOptions;
  /** Passed through to etcd3 (TLS credentials in memory, password auth); `tls` takes precedence. */
  credentials?: IOptions['credentials'];
  auth?: IOptions['auth'];
  logger?: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
  /** Registers store metrics (latency, leadership) here when given. */
  registry?: Registry;
}

const LIST_PAGE = 1000;

function abortReason(signal: AbortSignal | undefined, fallback: string): Error {
  const r: unknown = signal?.reason;
  return r instanceof Error ? r : new Error(fallback);
}

const WATCH_RETRY: BackoffPolicy = { baseMs: 100, maxMs: 2_000 };

/**
 * How soon a broken watch stream is re-established: doubling from 100 ms, at most 2 s apart
 * (etcd3's default backs off to 30 s). Every controller loop runs on watches; after etcd was
 * down for a few seconds, one of them waited up to half a minute more to hear of any change.
 * (etcd3 resets to the first delay whenever a response arrives.)
 */
function watchBackoff(attempt = 1): { duration: number; next(): ReturnType<typeof watchBackoff> } {
  return { duration: backoffDelay(WATCH_RETRY, attempt), next: () => watchBackoff(attempt + 1) };
}

/**
 * Makes a broken watch stream resume after `delivered()`, the last revision the watch has
 * really seen. etcd3 on its own resumes after the revision of the last response header (its
 * 'connected' and 'data' handlers), and a created response carries the store's current revision
 * while the catch-up events from the start revision are still to come: a second break before
 * they came resumed past them, lost for good (seen once in CI after an etcd restart).
 */
function resumeAfter(watcher: Watcher, delivered: () => number): void {
  watcher.on('disconnected', () => {
    watcher.request.start_revision = String(delivered() + 1);
  });
}

export class EtcdStore implements Store {
  readonly kind = 'etcd' as const;
  private readonly kv: Namespace;
  private readonly elect: Namespace;
  private closedWhy: string | undefined;
  private readonly watchers = new Set<{ stream: WatchStream<unknown>; watcher?: Watcher }>();
  private readonly leaderships = new Set<{ ctl: AbortController; resign(): Promise<void> }>();
  private readonly campaigns = new Set<AbortController>();
  private readonly metrics: StoreMetrics | undefined;
  private readonly fences = new WeakMap<Leadership, { name: string; leaseId: string }>();

  private constructor(
    private readonly client: Etcd3,
    readonly prefix: string,
    private readonly opts: EtcdStoreOptions,
  ) {
    this.metrics = opts.registry ? new StoreMetrics(opts.registry, 'etcd') : undefined;
    this.kv = client.namespace(`${prefix}kv/`);
    this.elect = client.namespace(`${prefix}elect/`);
  }

  static async open(opts: EtcdStoreOptions): Promise<EtcdStore> {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0 || !opts.endpoints.every((e) => typeof e === 'string' && /^https?:\/\//.test(e))) {
      throw new TypeError('store.endpoints must be a non-empty list of http(s):// URLs');
    }
    const prefix = opts.prefix ?? '/cello/';
    if (typeof prefix !== 'string' || prefix.length === 0) throw new TypeError('store.prefix must be a non-empty string');
    const timeout = opts.requestTimeoutMs ?? 10_000;
    checkEtcdTransport(opts.endpoints, opts.tls, opts.credentials !== undefined, opts.auth !== undefined);
    const client = new Etcd3({
      hosts: opts.endpoints,
      credentials: opts.tls ? etcdCredentials(opts.tls) : opts.credentials,
      auth: opts.auth,
      dialTimeout: timeout,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
      faultHandling: { watchBackoff: watchBackoff() },
    });
    const store = new EtcdStore(client, prefix, opts);
    try {
      // Fail at start, with the endpoints named, rather than on the first request.
      await client.get('health-probe').exec();
    } catch (err) {
      client.close();
      throw new Error(`cannot reach etcd at ${opts.endpoints.join(', ')}: ${(err as Error).message}`);
    }
    return store;
  }

  private ensureOpen(): void {
    if (this.closedWhy !== undefined) throw new StoreClosedError(this.closedWhy);
  }

  async get<T>(key: string): Promise<KeyValue<T> | undefined> {
    this.ensureOpen();
    checkKey(key);
    const res = await this.kv.get(key).exec();
    const kv = res.kvs[0];
    if (kv === undefined) return undefined;
    return { key, value: JSON.parse(kv.value.toString('utf8')) as T, modRevision: Number(kv.mod_revision) };
  }

  async list<T>(prefix: string): Promise<{ items: KeyValue<T>[]; revision: number }> {
    this.ensureOpen();
    if (typeof prefix !== 'string') throw new TypeError('prefix must be a string');
    const whole = Range.prefix(prefix);
    const items: KeyValue<T>[] = [];
    let start: Buffer = whole.start;
    let revision: number | undefined;
    // Paged, every page read at the first page's revision: one consistent snapshot, bounded
    // message sizes.
    for (;;) {
      const b = this.kv.getAll().inRange(new Range(start, whole.end)).sort('Key', 'Ascend').limit(LIST_PAGE);
      if (revision !== undefined) b.revision(revision);
      const res = await b.exec();
      revision ??= Number(res.header.revision);
      for (const kv of res.kvs) {
        items.push({ key: kv.key.toString('utf8'), value: JSON.parse(kv.value.toString('utf8')) as T, modRevision: Number(kv.mod_revision) });
      }
      if (!res.more || res.kvs.length === 0) break;
      start = Buffer.concat([res.kvs[res.kvs.length - 1]!.key, Buffer.from([0])]);
    }
    return { items, revision };
  }

  async put<T>(key: string, value: T, opts?: PutOptions): Promise<number> {
    const p = this.putInner(key, value, opts);
    return this.metrics ? this.metrics.time('put', p) : p;
  }

  private async putInner<T>(key: string, value: T, opts?: PutOptions): Promise<number> {
    this.ensureOpen();
    checkKey(key);
    const json = toJson(key, value);
    if (opts?.leader !== undefined) {
      const res = await this.fenced(opts.leader, key, opts.expectRevision, this.kv.put(key).value(json));
      return Number(res.header.revision);
    }
    if (opts?.expectRevision === undefined) {
      const res = await this.kv.put(key).value(json).exec();
      return Number(res.header.revision);
    }
    const res = await this.kv.if(key, 'Mod', '==', opts.expectRevision).then(this.kv.put(key).value(json)).else(this.kv.get(key)).commit();
    if (!res.succeeded) throw new ConflictError(key, opts.expectRevision, actualRevision(res));
    return Number(res.header.revision);
  }

  async delete(key: string, opts?: DeleteOptions): Promise<boolean> {
    this.ensureOpen();
    checkKey(key);
    if (opts?.leader !== undefined) {
      const res = await this.fenced(opts.leader, key, opts.expectRevision, this.kv.delete().key(key));
      return Number(res.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
    }
    if (opts?.expectRevision === undefined) {
      const res = await this.kv.delete().key(key).exec();
      return Number(res.deleted) > 0;
    }
    const res = await this.kv.if(key, 'Mod', '==', opts.expectRevision).then(this.kv.delete().key(key)).else(this.kv.get(key)).commit();
    if (!res.succeeded) throw new ConflictError(key, opts.expectRevision, actualRevision(res));
    return Number(res.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
  }

  /**
   * One transaction: the election key still carries our lease (and the key its expected
   * revision), then `op`. Compares use full keys on the un-namespaced client; ops keep their
   * own namespaces.
   */
  private async fenced(
    leader: Leadership,
    key: string,
    expectRevision: number | undefined,
    op: Parameters<ReturnType<Etcd3['if']>['then']>[0],
  ): Promise<Awaited<ReturnType<ReturnType<Etcd3['if']>['commit']>>> {
    const f = this.fences.get(leader);
    if (f === undefined) throw new TypeError('opts.leader is not a leadership obtained from this store');
    if (leader.signal.aborted) throw new NotLeaderError(f.name, leader.candidate);
    let txn = this.client.if(`${this.prefix}elect/${f.name}`, 'Lease', '==', f.leaseId);
    if (expectRevision !== undefined) txn = txn.and(`${this.prefix}kv/${key}`, 'Mod', '==', expectRevision);
    const res = await txn.then(op).else(this.elect.get(f.name), this.kv.get(key)).commit();
    if (res.succeeded) return res;
    const holder = res.responses[0]?.response_range?.kvs[0];
    if (holder?.lease !== f.leaseId) throw new NotLeaderError(f.name, leader.candidate);
    const actual = Number(res.responses[1]?.response_range?.kvs[0]?.mod_revision ?? 0);
    throw new ConflictError(key, expectRevision ?? actual, actual);
  }

  watch<T>(prefix: string, opts: { afterRevision?: number; signal: AbortSignal }): AsyncIterable<WatchEvent<T>> {
    this.ensureOpen();
    if (typeof prefix !== 'string') throw new TypeError('prefix must be a string');
    if (!(opts?.signal instanceof AbortSignal)) throw new TypeError('watch opts.signal must be an AbortSignal');
    const entry: { stream: WatchStream<unknown>; watcher?: Watcher } = { stream: undefined as unknown as WatchStream<unknown> };
    entry.stream = new WatchStream<unknown>(opts.signal, () => {
      this.watchers.delete(entry);
      void entry.watcher?.cancel().catch(() => undefined);
    });
    this.watchers.add(entry);
    void this.startWatch(prefix, opts.afterRevision, entry).catch((err: unknown) => entry.stream.end(watchError(err)));
    return entry.stream as WatchStream<T>;
  }

  private async startWatch(prefix: string, afterRevision: number | undefined, entry: { stream: WatchStream<unknown>; watcher?: Watcher }): Promise<void> {
    // "From now" is pinned to a revision read at call time, so events written after watch()
    // returned are never missed while the watch stream is being set up.
    const after = afterRevision ?? Number((await this.kv.get('\0').exec()).header.revision);
    if (entry.stream.ended) return;
    let last = after;
    const b = this.kv.watch();
    b.prefix(prefix);
    const watcher = b.startRevision(String(after + 1)).watcher();
    entry.watcher = watcher;
    watcher.on('data', (res) => {
      // etcd never splits one revision across responses, so anything at or below the last
      // revision already delivered is a redelivery after a reconnect.
      const floor = last;
      for (const ev of res.events) {
        const rev = Number(ev.kv.mod_revision);
        if (rev <= floor) continue;
        last = Math.max(last, rev);
        const key = ev.kv.key.toString('utf8'); // etcd3 already removed the namespace
        if (ev.type === 'Put') {
          entry.stream.push({ type: 'put', kv: { key, value: JSON.parse(ev.kv.value.toString('utf8')), modRevision: rev }, revision: rev });
        } else {
          entry.stream.push({ type: 'delete', key, revision: rev });
        }
      }
    });
    resumeAfter(watcher, () => last);
    watcher.on('error', (err) => {
      // etcd3 drops the compact_revision of a cancelled watch; a read at the revision we
      // needed tells whether compaction was the cause.
      void this.kv
        .get('\0')
        .revision(last + 1)
        .exec()
        .then(
          () => entry.stream.end(err),
          (probe: unknown) => entry.stream.end(/compacted/i.test(String(probe)) ? new CompactedError(last, NaN) : err),
        );
    });
    if (entry.stream.ended) await watcher.cancel().catch(() => undefined);
  }

  async campaign(name: string, candidate: string, opts: { ttlSeconds?: number; signal?: AbortSignal } = {}): Promise<Leadership> {
    this.ensureOpen();
    checkKey(name, 'election name');
    checkKey(candidate, 'candidate');
    const ttl = opts.ttlSeconds ?? 10;
    if (!Number.isInteger(ttl) || ttl < 2) throw new TypeError('campaign ttlSeconds must be an integer >= 2');
    if (opts.signal?.aborted) throw abortReason(opts.signal, 'campaign aborted');

    const campaignCtl = new AbortController();
    this.campaigns.add(campaignCtl);
    const onAbort = (): void => campaignCtl.abort(abortReason(opts.signal, 'campaign aborted'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const lease: Lease = this.elect.lease(ttl);
    let leaseId: string;
    let lastOk = Date.now();
    let firedAt = Date.now();
    lease.on('keepaliveFired', () => (firedAt = Date.now()));
    lease.on('keepaliveSucceeded', () => (lastOk = firedAt));
    try {
      leaseId = await lease.grant();
      lastOk = Date.now();
      for (;;) {
        if (campaignCtl.signal.aborted) throw campaignCtl.signal.reason;
        const res = await this.elect.if(name, 'Mod', '==', 0).then(this.elect.put(name).value(candidate).lease(leaseId)).else(this.elect.get(name)).commit();
        if (res.succeeded) break;
        await this.waitForDeletion(name, Number(res.header.revision), campaignCtl.signal);
      }
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw err instanceof Error ? err : new Error(String(err));
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      this.campaigns.delete(campaignCtl);
    }

    const ctl = new AbortController();
    this.metrics?.leader.set({ election: name }, 1);
    ctl.signal.addEventListener('abort', () => this.metrics?.leader.set({ election: name }, 0), { once: true });
    const lose = (why: string): void => {
      if (ctl.signal.aborted) return;
      this.opts.logger?.warn({ election: name, candidate, why }, 'lost leadership');
      ctl.abort(new Error(`lost leadership of ${name}: ${why}`));
      void cleanup();
    };
    // Keepalives every ttl/3; give up a margin before the server could expire the lease.
    const margin = Math.max(300, (ttl * 1000) / 5);
    const timer = setInterval(() => {
      if (Date.now() - lastOk > ttl * 1000 - margin) lose(`no successful lease keepalive for ${Date.now() - lastOk} ms (ttl ${ttl} s)`);
    }, 100);
    timer.unref();
    lease.on('lost', (err) => lose(`lease lost: ${err.message}`));
    let keyWatcher: Watcher | undefined;
    const cleanup = async (): Promise<void> => {
      clearInterval(timer);
      this.leaderships.delete(entry);
      await keyWatcher?.cancel().catch(() => undefined);
      // Deleting only if the key is still ours; revoking the lease would delete it anyway.
      await this.elect
        .if(name, 'Lease', '==', leaseId)
        .then(this.elect.delete().key(name))
        .commit()
        .catch(() => undefined);
      await lease.revoke().catch(() => undefined);
    };
    const entry = {
      ctl,
      resign: async (): Promise<void> => {
        if (ctl.signal.aborted) return;
        ctl.abort(new Error(`${candidate} resigned leadership of ${name}`));
        await cleanup();
      },
    };
    this.leaderships.add(entry);
    try {
      const w = this.elect.watch().key(name);
      keyWatcher = await w.create();
      const kw = keyWatcher;
      let seen = Number(kw.request.start_revision ?? 0) - 1; // etcd3 set it from the created response
      kw.on('delete', () => lose('election key was deleted'));
      kw.on('put', (kv) => {
        if (kv.lease !== leaseId) lose('election key was taken by another lease');
      });
      kw.on('data', (res) => {
        for (const ev of res.events) seen = Math.max(seen, Number(ev.kv.mod_revision));
      });
      resumeAfter(kw, () => seen); // or a deletion could be skipped
      // The key may have changed between winning and watching.
      const now = await this.elect.get(name).exec();
      if (now.kvs[0]?.lease !== leaseId) lose('election key changed before it could be watched');
    } catch (err) {
      lose(`cannot watch the election key: ${(err as Error).message}`);
    }
    const leadership: Leadership = { candidate, signal: ctl.signal, resign: entry.resign };
    this.fences.set(leadership, { name, leaseId });
    return leadership;
  }

  /** Resolves when `name` is deleted after `seenRevision`; rejects if `signal` aborts. */
  private async waitForDeletion(name: string, seenRevision: number, signal: AbortSignal): Promise<void> {
    const watcher = await this.elect
      .watch()
      .key(name)
      .startRevision(String(seenRevision + 1))
      .create();
    resumeAfter(watcher, () => seenRevision); // only a delete matters: look again from the start
    try {
      await new Promise<void>((resolve, reject) => {
        if (signal.aborted) return reject(signal.reason);
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        watcher.on('delete', () => resolve());
        watcher.on('error', reject);
      });
    } finally {
      await watcher.cancel().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    if (this.closedWhy !== undefined) return;
    this.closedWhy = 'closed by close()';
    const err = new StoreClosedError(this.closedWhy);
    for (const c of this.campaigns) c.abort(err);
    // Resign rather than let leases run out: a standby takes over at once.
    await Promise.all([...this.leaderships].map((l) => l.resign()));
    for (const w of [...this.watchers]) w.stream.end(err);
    this.client.close();
  }
}

function actualRevision(res: { responses: { response_range?: { kvs: { mod_revision: string }[] } | null }[] }): number {
  return Number(res.responses[0]?.response_range?.kvs[0]?.mod_revision ?? 0);
}

function watchError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
