// The one contract every Store backend passes. Backends call storeContract() from their own test
// file with a harness that opens fresh, isolated stores.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ConflictError, NotLeaderError, StoreClosedError, type Leadership, type Store, type WatchEvent } from '../../src/store/index.js';

export interface StoreHarness {
  /** A fresh, empty store, isolated from every other test's. */
  open(): Promise<Store>;
  /**
   * Another participant in the same store, as a second controller would be (etcd: another
   * client; embedded: the same store, since only one process may open a directory).
   */
  peer(store: Store): Promise<Store>;
  /** Ends `leader`'s leadership without resign(), the way a crash or partition would. */
  loseLeadership(store: Store, leader: Leadership): Promise<void>;
}

const DEADLINE_MS = 10_000;

/** Collects `n` events from a watch, failing after a deadline. */
async function take<T>(it: AsyncIterable<WatchEvent<T>>, n: number, ms = DEADLINE_MS): Promise<WatchEvent<T>[]> {
  const out: WatchEvent<T>[] = [];
  const iter = it[Symbol.asyncIterator]();
  const deadline = Date.now() + ms;
  while (out.length < n) {
    const left = deadline - Date.now();
    const r = await Promise.race([iter.next(), sleep(Math.max(left, 0)).then(() => 'timeout' as const)]);
    if (r === 'timeout') throw new Error(`watch delivered ${out.length} of ${n} events within ${ms} ms`);
    if (r.done) break;
    out.push(r.value);
  }
  return out;
}

/** Resolves to 'pending' if `p` has not settled after `ms`. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<'pending' | 'settled'> {
  return Promise.race([
    p.then(
      () => 'settled' as const,
      () => 'settled' as const,
    ),
    sleep(ms).then(() => 'pending' as const),
  ]);
}

function describeEvent(e: WatchEvent): string {
  return e.type === 'put' ? `put ${e.kv.key}=${JSON.stringify(e.kv.value)}@${e.revision}` : `delete ${e.key}@${e.revision}`;
}

export function storeContract(name: string, h: StoreHarness): void {
  describe(`Store contract: ${name}`, () => {
    const opened: Store[] = [];
    const open = async (): Promise<Store> => {
      const s = await h.open();
      opened.push(s);
      return s;
    };
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close().catch(() => undefined);
    });

    it('gets, puts, overwrites and deletes', async () => {
      const s = await open();
      expect(await s.get('pods/a')).toBeUndefined();
      const r1 = await s.put('pods/a', { phase: 'Pending', n: 1, tags: ['x'] });
      expect(r1).toBeGreaterThan(0);
      expect(await s.get('pods/a')).toEqual({ key: 'pods/a', value: { phase: 'Pending', n: 1, tags: ['x'] }, modRevision: r1 });
      const r2 = await s.put('pods/a', { phase: 'Running' });
      expect(r2).toBeGreaterThan(r1);
      expect((await s.get('pods/a'))?.value).toEqual({ phase: 'Running' });
      expect(await s.delete('pods/a')).toBe(true);
      expect(await s.get('pods/a')).toBeUndefined();
      expect(await s.delete('pods/a')).toBe(false);
    });

    it('returns copies: mutating a read value does not change the store', async () => {
      const s = await open();
      await s.put('k', { list: [1, 2] });
      const got = await s.get<{ list: number[] }>('k');
      got!.value.list.push(3);
      expect((await s.get('k'))?.value).toEqual({ list: [1, 2] });
    });

    it('refuses values that are not JSON and empty keys, naming the problem', async () => {
      const s = await open();
      await expect(s.put('k', undefined)).rejects.toMatchObject({ code: 'InvalidArgument', message: expect.stringContaining('"k"') });
      await expect(s.put('', 1)).rejects.toMatchObject({ code: 'InvalidArgument' });
    });

    it('lists a prefix sorted by key, with the revision it was read at', async () => {
      const s = await open();
      for (const k of ['pods/c', 'pods/a', 'podsX', 'cells/1', 'pods/b/1', 'pods/b']) await s.put(k, { k });
      const last = await s.put('pods/0', { k: 'pods/0' });
      const { items, revision } = await s.list<{ k: string }>('pods/');
      expect(items.map((i) => i.key)).toEqual(['pods/0', 'pods/a', 'pods/b', 'pods/b/1', 'pods/c']);
      expect(items.every((i) => i.value.k === i.key)).toBe(true);
      expect(revision).toBeGreaterThanOrEqual(last);
      expect((await s.list('nothing/')).items).toEqual([]);
    });

    it('compare-and-swap: create-only, update-if-unchanged, conflicts carry the actual revision', async () => {
      const s = await open();
      const r1 = await s.put('cas', 1, { expectRevision: 0 });
      const err = await s.put('cas', 2, { expectRevision: 0 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect(err).toMatchObject({ key: 'cas', expected: 0, actual: r1 });
      const r2 = await s.put('cas', 2, { expectRevision: r1 });
      await expect(s.put('cas', 3, { expectRevision: r1 })).rejects.toBeInstanceOf(ConflictError);
      expect((await s.get('cas'))?.value).toBe(2);
      await expect(s.delete('cas', { expectRevision: r1 })).rejects.toBeInstanceOf(ConflictError);
      expect(await s.delete('cas', { expectRevision: r2 })).toBe(true);
      await expect(s.put('absent', 1, { expectRevision: 5 })).rejects.toMatchObject({ actual: 0 });
    });

    it('revisions increase strictly across keys, and deletes advance the revision', async () => {
      const s = await open();
      const revs: number[] = [];
      for (let i = 0; i < 20; i++) revs.push(await s.put(`r/${i % 3}`, i));
      for (let i = 1; i < revs.length; i++) expect(revs[i]).toBeGreaterThan(revs[i - 1]!);
      const before = (await s.list('r/')).revision;
      await s.delete('r/0');
      const after = (await s.list('r/')).revision;
      expect(after).toBeGreaterThan(before);
      const r = await s.put('r/9', 'x');
      expect(r).toBeGreaterThan(after);
    });

    it('watch delivers puts and deletes under the prefix in order, from a list revision', async () => {
      const s = await open();
      await s.put('w/old', 'before');
      const { revision } = await s.list('w/');
      const ac = new AbortController();
      const events = s.watch<string>('w/', { afterRevision: revision, signal: ac.signal });
      const r1 = await s.put('w/a', 'one');
      await s.put('other/x', 'not watched');
      const r2 = await s.put('w/b', 'two');
      await s.delete('w/a');
      const r4 = await s.put('w/a', 'three');
      const got = await take(events, 4);
      ac.abort();
      expect(got.map(describeEvent)).toEqual([`put w/a="one"@${r1}`, `put w/b="two"@${r2}`, expect.stringMatching(/^delete w\/a@\d+$/), `put w/a="three"@${r4}`]);
      const del = got[2] as { revision: number };
      expect(del.revision).toBeGreaterThan(r2);
      expect(del.revision).toBeLessThan(r4);
      if (got[0]!.type === 'put') expect(got[0]!.kv.modRevision).toBe(r1);
    });

    it('watch resumes after a revision: exactly the later events, none twice', async () => {
      const s = await open();
      const revs: number[] = [];
      for (let i = 0; i < 6; i++) revs.push(await s.put(`res/${i}`, i));
      const ac = new AbortController();
      const got = await take(s.watch<number>('res/', { afterRevision: revs[2]!, signal: ac.signal }), 3);
      ac.abort();
      expect(got.map((e) => (e.type === 'put' ? e.kv.value : -1))).toEqual([3, 4, 5]);
      expect(got.map((e) => e.revision)).toEqual(revs.slice(3));
    });

    it('watch without a revision starts from now and ends when its signal aborts', async () => {
      const s = await open();
      await s.put('now/old', 1);
      const ac = new AbortController();
      const stream = s.watch<number>('now/', { signal: ac.signal });
      // Give a remote watch time to be established before writing.
      await sleep(200);
      await s.put('now/new', 2);
      const [ev] = await take(stream, 1);
      expect(ev).toMatchObject({ type: 'put', kv: { key: 'now/new', value: 2 } });
      ac.abort();
      const rest = await take(stream, 1, 3000);
      expect(rest).toEqual([]);
    });

    it('concurrent writers: CAS increments never lose an update, distinct puts all land', async () => {
      const s = await open();
      const other = await h.peer(s);
      await s.put('counter', 0, { expectRevision: 0 });
      let conflicts = 0;
      const increment = async (st: Store): Promise<void> => {
        for (let attempt = 0; attempt < 200; attempt++) {
          const cur = (await st.get<number>('counter'))!;
          try {
            await st.put('counter', cur.value + 1, { expectRevision: cur.modRevision });
            return;
          } catch (err) {
            if (!(err instanceof ConflictError)) throw err;
            conflicts++;
          }
        }
        throw new Error('increment starved');
      };
      await Promise.all(Array.from({ length: 30 }, (_, i) => increment(i % 2 ? s : other)));
      expect((await s.get('counter'))?.value).toBe(30);
      expect(conflicts).toBeGreaterThan(0);
      const revs = await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? s : other).put(`many/${String(i).padStart(3, '0')}`, i)));
      expect(new Set(revs).size).toBe(100);
      const { items } = await s.list<number>('many/');
      expect(items.map((i) => i.value)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    });

    it('leader election: one leader at a time; resign hands over', async () => {
      const s = await open();
      const other = await h.peer(s);
      const a = await s.campaign('ctl', 'a', { ttlSeconds: 5 });
      expect(a.candidate).toBe('a');
      expect(a.signal.aborted).toBe(false);
      const bPromise = other.campaign('ctl', 'b', { ttlSeconds: 5 });
      expect(await settledWithin(bPromise, 500)).toBe('pending');
      // Another election name is independent.
      const c = await other.campaign('other-election', 'c', { ttlSeconds: 5 });
      await a.resign();
      expect(a.signal.aborted).toBe(true);
      const b = await Promise.race([bPromise, sleep(DEADLINE_MS).then(() => undefined)]);
      expect(b?.candidate).toBe('b');
      expect(b!.signal.aborted).toBe(false);
      await b!.resign();
      await c.resign();
    });

    it('a campaign can be abandoned through its signal', async () => {
      const s = await open();
      const other = await h.peer(s);
      const a = await s.campaign('ctl', 'a', { ttlSeconds: 5 });
      const ac = new AbortController();
      const b = other.campaign('ctl', 'b', { ttlSeconds: 5, signal: ac.signal });
      await sleep(100);
      ac.abort(new Error('gave up'));
      await expect(b).rejects.toThrow(/gave up/);
      // The abandoned candidate must not be handed leadership later.
      await a.resign();
      const c = await Promise.race([s.campaign('ctl', 'c', { ttlSeconds: 5 }), sleep(DEADLINE_MS).then(() => undefined)]);
      expect(c?.candidate).toBe('c');
      await c!.resign();
    });

    it('writes fenced by a leadership land while it is held and are refused once it ends', async () => {
      const s = await open();
      const other = await h.peer(s);
      const a = await s.campaign('ctl', 'a', { ttlSeconds: 5 });
      const r1 = await s.put('fenced', 1, { leader: a });
      await expect(s.put('fenced', 2, { leader: a, expectRevision: r1 - 1 })).rejects.toBeInstanceOf(ConflictError);
      const r2 = await s.put('fenced', 2, { leader: a, expectRevision: r1 });
      expect(r2).toBeGreaterThan(r1);
      const bPromise = other.campaign('ctl', 'b', { ttlSeconds: 5 });
      await a.resign();
      const b = await Promise.race([bPromise, sleep(DEADLINE_MS).then(() => undefined)]);
      expect(b?.candidate).toBe('b');
      const stale = await s.put('fenced', 3, { leader: a }).catch((e: unknown) => e);
      expect(stale).toBeInstanceOf(NotLeaderError);
      expect(String(stale)).toMatch(/a no longer leads ctl/);
      await expect(s.delete('fenced', { leader: a })).rejects.toBeInstanceOf(NotLeaderError);
      expect((await s.get('fenced'))?.value).toBe(2);
      await other.put('fenced', 4, { leader: b! });
      expect((await s.get('fenced'))?.value).toBe(4);
      expect(await other.delete('fenced', { leader: b! })).toBe(true);
      await b!.resign();
    });

    it('leadership loss is signalled', async () => {
      const s = await open();
      const a = await s.campaign('ctl', 'a', { ttlSeconds: 2 });
      const lost = new Promise<unknown>((resolve) => a.signal.addEventListener('abort', () => resolve(a.signal.reason), { once: true }));
      await h.loseLeadership(s, a);
      const reason = await Promise.race([lost, sleep(DEADLINE_MS).then(() => 'not signalled')]);
      expect(reason).toBeInstanceOf(Error);
      expect(a.signal.aborted).toBe(true);
      // A write fenced by the lost leadership is refused (the closed embedded store refuses all).
      await expect(s.put('after-loss', 1, { leader: a })).rejects.toMatchObject({ code: 'Unavailable' });
    });

    it('close ends watches and refuses further operations', async () => {
      const s = await open();
      const ac = new AbortController();
      const stream = s.watch('c/', { signal: ac.signal });
      const ended = take(stream, 1, DEADLINE_MS).then(
        (evs) => ({ evs }),
        (err: unknown) => ({ err }),
      );
      await s.close();
      const r = await ended;
      expect('evs' in r ? r.evs : []).toEqual([]);
      await expect(s.put('c/x', 1)).rejects.toBeInstanceOf(StoreClosedError);
      await expect(s.get('c/x')).rejects.toBeInstanceOf(StoreClosedError);
    });
  });
}
