import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { startEtcd, waitFor, type EtcdServer } from '@cello/testkit';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CompactedError, ConflictError, type EtcdStore, openStore, type Store } from '../../src/store/index.js';
import { storeContract } from './contract.js';
import { transpileSources } from './transpile.js';

let etcd: EtcdServer;
let raw: Etcd3;
beforeAll(async () => {
  etcd = await startEtcd();
  raw = new Etcd3({ hosts: etcd.endpoints });
});
afterAll(async () => {
  raw?.close();
  await etcd?.stop();
});

const openFresh = async (): Promise<EtcdStore> => (await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix: `/t-${randomUUID()}/` })) as EtcdStore;

storeContract('etcd', {
  open: openFresh,
  peer: async (s) => openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix: (s as EtcdStore).prefix }),
  // As an operator (or etcd expiring the lease) would: the election key disappears.
  loseLeadership: async (s) => {
    await raw
      .delete()
      .prefix(`${(s as EtcdStore).prefix}elect/`)
      .exec();
  },
});

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`${what} did not happen within ${ms} ms`)))]);
}

describe('etcd store', () => {
  const stores: Store[] = [];
  afterAll(async () => {
    for (const s of stores) await s.close().catch(() => undefined);
  });

  it('lists more than one page, sorted and at one revision', async () => {
    const s = await openFresh();
    stores.push(s);
    const n = 1234;
    for (let i = 0; i < n; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, j) => s.put(`p/${String(i + j).padStart(5, '0')}`, i + j)));
    }
    const { items, revision } = await s.list<number>('p/');
    expect(items.length).toBe(n);
    expect(items.map((x) => x.value)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(revision).toBeGreaterThanOrEqual(Math.max(...items.map((x) => x.modRevision)));
  });

  it('a watch from a compacted revision fails with CompactedError', async () => {
    const s = await openFresh();
    stores.push(s);
    const first = await s.put('cmp/a', 1);
    await s.put('cmp/a', 2);
    const last = await s.put('cmp/a', 3);
    await raw.kv.compact({ revision: String(last), physical: true });
    const ac = new AbortController();
    const err = await (async () => {
      try {
        for await (const ev of s.watch('cmp/', { afterRevision: first, signal: ac.signal })) void ev;
        return 'ended without error';
      } catch (e) {
        return e;
      }
    })();
    ac.abort();
    expect(err).toBeInstanceOf(CompactedError);
    // Listing gives a revision to watch from again.
    const { revision } = await s.list('cmp/');
    const ac2 = new AbortController();
    const it2 = s.watch<number>('cmp/', { afterRevision: revision, signal: ac2.signal })[Symbol.asyncIterator]();
    await s.put('cmp/b', 4);
    const next = await within(it2.next(), 10_000, 'event after re-listing');
    expect(next.value).toMatchObject({ type: 'put', kv: { key: 'cmp/b', value: 4 } });
    ac2.abort();
  });

  it('survives an etcd crash: watches resume without gaps or repeats, writes continue', async () => {
    const own = await startEtcd();
    try {
      const s = await openStore({ kind: 'etcd', endpoints: own.endpoints, requestTimeoutMs: 2000 });
      const { revision } = await s.list('r/');
      const ac = new AbortController();
      const it = s.watch<number>('r/', { afterRevision: revision, signal: ac.signal })[Symbol.asyncIterator]();
      await s.put('r/1', 1);
      await own.restart(); // kill -9 and start again on the same data
      // Create-only, so a retry of a put that did land cannot write a second event.
      const putOnce = (): Promise<boolean> =>
        s.put('r/2', 2, { expectRevision: 0 }).then(
          () => true,
          (e: unknown) => {
            if (e instanceof ConflictError) return true;
            throw e;
          },
        );
      await waitFor('a put after the etcd restart', putOnce, { timeoutMs: 20_000, intervalMs: 200 });
      await s.put('r/3', 3);
      const got: number[] = [];
      while (got.length < 3) {
        const n = await within(it.next(), 20_000, `watch event ${got.length + 1}`);
        if (n.done) break;
        if (n.value.type === 'put') got.push(n.value.kv.value);
      }
      expect(got).toEqual([1, 2, 3]);
      ac.abort();
      await s.close();
    } finally {
      await own.stop();
    }
  });

  it('a watch broken again after etcd3 saw a later response header resumes from what it delivered', async () => {
    // etcd3 moves a watcher's resume point to the revision in each response header; a created
    // response carries the store's current revision before the catch-up events arrive. Stand
    // in for that response, then break the stream: the events after r/1 must still come.
    const own = await startEtcd();
    try {
      const s = await openStore({ kind: 'etcd', endpoints: own.endpoints, requestTimeoutMs: 2000 });
      const { revision } = await s.list('g/');
      const ac = new AbortController();
      const it = s.watch<number>('g/', { afterRevision: revision, signal: ac.signal })[Symbol.asyncIterator]();
      await s.put('g/1', 1);
      expect((await within(it.next(), 20_000, 'g/1')).value).toMatchObject({ kv: { key: 'g/1', value: 1 } });
      const [entry] = [...(s as unknown as { watchers: Set<{ watcher?: { emit(e: string, v: unknown): boolean } }> }).watchers];
      entry!.watcher!.emit('connected', { header: { revision: String(revision + 1000) } });
      await own.restart();
      await waitFor(
        'a put after the etcd restart',
        () =>
          s.put('g/2', 2).then(
            () => true,
            () => false,
          ),
        { timeoutMs: 20_000, intervalMs: 200 },
      );
      const n = await within(it.next(), 20_000, 'g/2 after the restart');
      expect(n.value).toMatchObject({ type: 'put', kv: { key: 'g/2', value: 2 } });
      ac.abort();
      await s.close();
    } finally {
      await own.stop();
    }
  });

  it('keeps data keys and election keys apart', async () => {
    const s = await openFresh();
    stores.push(s);
    const l = await s.campaign('ctl', 'a', { ttlSeconds: 5 });
    await s.put('x', 1);
    expect((await s.list('')).items.map((i) => i.key)).toEqual(['x']);
    await l.resign();
  });

  it('a killed leader (kill -9) is replaced once its lease expires, not before', async () => {
    const prefix = `/t-${randomUUID()}/`;
    const child = transpileSources(
      ['store/etcd.ts', 'store/etcd-tls.ts', 'store/store.ts', 'store/entry.ts', 'store/watch-stream.ts', 'store/metrics.ts', 'util/backoff.ts', 'errors.ts', 'util/errors.ts'],
      {
        'leader.mjs': `import { EtcdStore } from './etcd.js';
const s = await EtcdStore.open({ endpoints: [process.argv[2]], prefix: process.argv[3] });
const l = await s.campaign('ctl', 'child', { ttlSeconds: 2 });
process.stdout.write('LEADER\\n');
setInterval(() => {}, 1000);
`,
      },
    );
    try {
      const proc = spawn(process.execPath, [`${child.dir}/leader.mjs`, etcd.endpoint, prefix], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise<void>((res) => proc.on('exit', () => res()));
      await within(new Promise<void>((res) => createInterface({ input: proc.stdout }).on('line', (l) => l === 'LEADER' && res())), 15_000, 'child becoming leader');
      const s = await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix });
      stores.push(s);
      let elected = 0;
      const mine = s.campaign('ctl', 'parent', { ttlSeconds: 2 }).then((l) => ((elected = Date.now()), l));
      await sleep(1000);
      expect(elected).toBe(0); // the live child still leads
      const killedAt = Date.now();
      proc.kill('SIGKILL');
      await exited;
      const l = await within(mine, 10_000, 'takeover after the leader died');
      const delay = elected - killedAt;
      // The takeover waits for the dead leader's lease (2 s TTL), and happens promptly after.
      expect(delay).toBeGreaterThan(500);
      expect(delay).toBeLessThan(6000);
      await l.resign();
    } finally {
      child.remove();
    }
  });

  it('a leader cut off from etcd gives up leadership before its lease could expire', async () => {
    const own = await startEtcd();
    try {
      const s = await openStore({ kind: 'etcd', endpoints: own.endpoints, requestTimeoutMs: 1000 });
      const l = await s.campaign('ctl', 'a', { ttlSeconds: 3 });
      const lost = new Promise<number>((res) => l.signal.addEventListener('abort', () => res(Date.now()), { once: true }));
      const frozenAt = Date.now();
      process.kill(own.pid, 'SIGSTOP'); // etcd stops answering, as in a partition
      try {
        const at = await within(lost, 10_000, 'leadership loss while etcd is unreachable');
        expect(at - frozenAt).toBeLessThan(3000);
        expect(String(l.signal.reason)).toMatch(/keepalive|lease/);
      } finally {
        process.kill(own.pid, 'SIGCONT');
      }
      await s.close();
    } finally {
      await own.stop();
    }
  });

  it('names the field when the configuration is wrong, and reports an unreachable etcd', async () => {
    await expect(openStore({ kind: 'etcd', endpoints: [] })).rejects.toThrow(/store\.endpoints/);
    await expect(openStore({ kind: 'etcd', endpoints: ['127.0.0.1:1'] })).rejects.toThrow(/store\.endpoints/);
    await expect(openStore({ kind: 'etcd', endpoints: ['http://127.0.0.1:1'], requestTimeoutMs: 500 })).rejects.toThrow(/cannot reach etcd at http:\/\/127\.0\.0\.1:1/);
  });
});
