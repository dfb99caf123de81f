import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { crc32 } from 'node:zlib';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { CompactedError, EmbeddedStore, StoreLockedError, openStore } from '../../src/store/index.js';
import { encodeFrame } from '../../src/store/embedded.js';
import { SortedKeys } from '../../src/store/sorted-keys.js';
import { storeContract } from './contract.js';
import { transpileSources } from './transpile.js';
import { waitFor } from '@cello/testkit';

const tmpDirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await fs.mkdtemp(join(tmpdir(), 'cello-store-'));
  tmpDirs.push(d);
  return d;
}
afterAll(async () => {
  for (const d of tmpDirs) await fs.rm(d, { recursive: true, force: true });
});

storeContract('embedded', {
  open: async () => openStore({ kind: 'embedded', dir: await tempDir() }),
  peer: async (s) => s,
  loseLeadership: async (s) => s.close(),
});

const WRITER = `import { EmbeddedStore } from './embedded.js';
const store = await EmbeddedStore.open({ dir: process.argv[2], compactBytes: Number(process.argv[3]) });
process.stdout.write('OPEN\\n');
let i = 0;
// Acknowledges a key on stdout only after put() resolved, i.e. after fsync.
async function worker() {
  for (;;) {
    const n = i++;
    await store.put('k/' + String(n).padStart(8, '0'), { n, pad: 'x'.repeat(n % 300) });
    process.stdout.write('ACK ' + n + '\\n');
  }
}
for (let w = 0; w < 8; w++) void worker();
`;

describe('embedded store durability', () => {
  it('keeps data and continues revisions across close and reopen', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir });
    await s1.put('a', { v: 1 });
    const r = await s1.put('b', { v: 2 });
    await s1.delete('a');
    await s1.close();
    const s2 = await EmbeddedStore.open({ dir });
    expect(await s2.get('a')).toBeUndefined();
    expect(await s2.get('b')).toEqual({ key: 'b', value: { v: 2 }, modRevision: r });
    expect(await s2.put('c', 3)).toBeGreaterThan(r + 1);
    await s2.close();
  });

  it('refuses a second opener of the same directory while the first is alive', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir });
    const err = await EmbeddedStore.open({ dir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreLockedError);
    expect(String(err)).toMatch(new RegExp(`locked by pid ${process.pid}`));
    await s1.close();
    const s2 = await EmbeddedStore.open({ dir });
    await s2.close();
  });

  it('survives kill -9 of a writer: every acknowledged write is there after reopen', async () => {
    const code = transpileSources(
      [
        'store/embedded.ts',
        'store/sorted-keys.ts',
        'store/lockfile.ts',
        'store/store.ts',
        'store/entry.ts',
        'store/watch-stream.ts',
        'store/metrics.ts',
        'errors.ts',
        'util/errors.ts',
      ],
      { 'writer.mjs': WRITER },
    );
    try {
      for (const compactBytes of [16 * 1024 * 1024, 64 * 1024]) {
        const dir = await tempDir();
        const child = spawn(process.execPath, [join(code.dir, 'writer.mjs'), dir, String(compactBytes)], {
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        const acked: number[] = [];
        let opened = false;
        const lines = createInterface({ input: child.stdout });
        const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, sig) => res(sig)));
        await new Promise<void>((resolveWait, reject) => {
          const timer = setTimeout(() => reject(new Error(`writer acknowledged only ${acked.length} writes in 15 s`)), 15_000);
          lines.on('line', (l) => {
            if (l === 'OPEN') opened = true;
            else if (l.startsWith('ACK ')) acked.push(Number(l.slice(4)));
            if (acked.length >= 1500) {
              clearTimeout(timer);
              resolveWait();
            }
          });
          child.on('exit', () => reject(new Error('writer exited early')));
        });
        child.kill('SIGKILL');
        expect(await exited).toBe('SIGKILL');
        expect(opened).toBe(true);
        // The dead writer's lock is stale: reopening takes it over.
        const s = await EmbeddedStore.open({ dir });
        const { items } = await s.list<{ n: number }>('k/');
        const present = new Set(items.map((i) => i.value.n));
        const missing = acked.filter((n) => !present.has(n));
        expect(missing).toEqual([]);
        // Whatever is present is intact (no half-written value survived).
        for (const i of items) expect(i.key).toBe(`k/${String(i.value.n).padStart(8, '0')}`);
        if (compactBytes < 1024 * 1024) {
          expect((await fs.stat(join(dir, 'snapshot.json'))).size).toBeGreaterThan(0);
        }
        await s.close();
      }
    } finally {
      code.remove();
    }
  });

  it('repairs a torn tail and refuses nothing that was complete', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir });
    for (let i = 0; i < 10; i++) await s1.put(`t/${i}`, i);
    await s1.close();
    const wal = join(dir, 'wal.log');
    const goodSize = (await fs.stat(wal)).size;
    // A frame cut short mid-payload, as a crash during append leaves it.
    const frame = encodeFrame({ r: 999, o: 'p', k: 't/torn', v: '"never acknowledged"' });
    await fs.appendFile(wal, frame.subarray(0, frame.length - 5));
    const s2 = await EmbeddedStore.open({ dir });
    expect(s2.stats.tornBytesRepaired).toBe(frame.length - 5);
    expect((await fs.stat(wal)).size).toBe(goodSize);
    expect((await s2.list('t/')).items.length).toBe(10);
    expect(await s2.get('t/torn')).toBeUndefined();
    await s2.put('t/after', 'ok');
    await s2.close();
    // A complete frame with a bad checksum is also cut, and writes after repair replay cleanly.
    const bad = encodeFrame({ r: 1000, o: 'p', k: 't/bad', v: '1' });
    bad.writeUInt32LE(bad.readUInt32LE(4) ^ 1, 4);
    await fs.appendFile(wal, bad);
    const s3 = await EmbeddedStore.open({ dir });
    expect(s3.stats.tornBytesRepaired).toBe(bad.length);
    expect((await s3.get('t/after'))?.value).toBe('ok');
    expect(await s3.get('t/bad')).toBeUndefined();
    await s3.close();
  });

  it('keeps its files 0600 in a 0700 directory whatever the umask, through compaction, and narrows what an earlier version left wider', async () => {
    // The store holds the sealed CA key, sealed secrets and every pod spec.
    const umask = process.umask(0o022);
    try {
      const fresh = join(await tempDir(), 'store');
      const old = join(await tempDir(), 'store');
      await fs.mkdir(old, { mode: 0o755 });
      await fs.writeFile(join(old, 'wal.log'), '', { mode: 0o644 });
      await fs.chmod(old, 0o755);
      for (const dir of [fresh, old]) {
        const s = await EmbeddedStore.open({ dir, compactBytes: 2048 });
        for (let i = 0; i < 200; i++) await s.put(`m/${i % 20}`, { i, pad: 'x'.repeat(50) });
        await waitFor('a compaction', () => s.stats.compactions > 0, { timeoutMs: 5000 });
        await s.put('m/after', 1);
        const modes: Record<string, string> = {};
        for (const name of await fs.readdir(dir)) modes[name] = ((await fs.stat(join(dir, name))).mode & 0o777).toString(8);
        expect(Object.keys(modes)).toEqual(expect.arrayContaining(['LOCK', 'wal.log', 'snapshot.json']));
        expect(modes, dir).toEqual(Object.fromEntries(Object.keys(modes).map((n) => [n, '600'])));
        expect(((await fs.stat(dir)).mode & 0o777).toString(8), dir).toBe('700');
        await s.close();
      }
    } finally {
      process.umask(umask);
    }
  });

  it('compacts into a snapshot; reopen restores all; watches older than the snapshot are refused', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir, compactBytes: 4096 });
    for (let i = 0; i < 300; i++) await s1.put(`c/${i % 50}`, { i });
    // Snapshots are written in the background while writes go on.
    await waitFor('a compaction', () => s1.stats.compactions > 0, { timeoutMs: 5000 });
    expect((await fs.stat(join(dir, 'wal.log'))).size).toBeLessThan(4096 + 200);
    const before = await s1.list('c/');
    await s1.close();
    const s2 = await EmbeddedStore.open({ dir });
    const after = await s2.list('c/');
    expect(after).toEqual(before);
    expect(() => s2.watch('c/', { afterRevision: 1, signal: new AbortController().signal })).toThrow(CompactedError);
    await s2.close();
  });

  it('recovers from a crash inside compaction: stale WAL after the snapshot, leftover temp snapshot', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir, compactBytes: 2048 });
    const revs: number[] = [];
    for (let i = 0; i < 40; i++) revs.push(await s1.put(`x/${i % 7}`, { i }));
    await s1.delete('x/0');
    const walBefore = await fs.readFile(join(dir, 'wal.log'));
    for (let i = 40; i < 80; i++) await s1.put(`x/${i % 7}`, { i });
    // Snapshots are written in the background while writes go on.
    await waitFor('a compaction', () => s1.stats.compactions > 0, { timeoutMs: 5000 });
    const expected = await s1.list('x/');
    await s1.close();
    // Crash after the snapshot rename but before the WAL was cut: old frames are still there,
    // followed by a half-written temp snapshot from a later attempt.
    const wal = await fs.readFile(join(dir, 'wal.log'));
    await fs.writeFile(join(dir, 'wal.log'), Buffer.concat([walBefore, wal]));
    await fs.writeFile(join(dir, 'snapshot.json.tmp'), '{"format":1,"revi');
    const s2 = await EmbeddedStore.open({ dir });
    expect(await s2.list('x/')).toEqual(expected);
    const next = await s2.put('x/new', 1);
    expect(next).toBe(expected.revision + 1);
    await expect(fs.stat(join(dir, 'snapshot.json.tmp'))).rejects.toThrow(/ENOENT/);
    await s2.close();
  });

  it('replays WAL segments a compaction left behind, in order, and removes them once a snapshot covers them', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir });
    for (let i = 0; i < 10; i++) await s1.put(`seg/${i}`, { i, gen: 1 });
    await s1.close();
    // As a crash between "WAL moved aside" and "snapshot renamed" leaves it.
    await fs.rename(join(dir, 'wal.log'), join(dir, 'wal.4.log'));
    const s2 = await EmbeddedStore.open({ dir, compactBytes: 2048 });
    expect((await s2.list('seg/')).items).toHaveLength(10);
    for (let i = 0; i < 10; i++) await s2.put(`seg/${i}`, { i, gen: 2, pad: 'x'.repeat(300) });
    // Writes went on during the background snapshot; once it is in place, the segments go.
    await waitFor('segments removed', async () => !(await fs.readdir(dir)).some((n) => /^wal\.\d+\.log$/.test(n)), { timeoutMs: 5000 });
    expect(s2.stats.compactions).toBeGreaterThan(0);
    const expected = await s2.list('seg/');
    await s2.close();
    const s3 = await EmbeddedStore.open({ dir });
    expect(await s3.list('seg/')).toEqual(expected);
    expect(expected.items.every((kv) => (kv.value as { gen: number }).gen === 2)).toBe(true);
    await s3.close();
  });

  it('reads WAL frames of the older all-JSON form next to the current ones', async () => {
    const dir = await tempDir();
    const s1 = await EmbeddedStore.open({ dir });
    await s1.put('f/new', { form: 'value after a newline' });
    await s1.close();
    // As an older controller wrote a put: the whole record, value included, as one JSON text.
    const rec = { r: 2, o: 'p', k: 'f/old', v: JSON.stringify({ form: 'json string' }) };
    const payload = Buffer.from(JSON.stringify(rec), 'utf8');
    const frame = Buffer.alloc(8 + payload.length);
    frame.writeUInt32LE(payload.length, 0);
    frame.writeUInt32LE(crc32(payload), 4);
    payload.copy(frame, 8);
    await fs.appendFile(join(dir, 'wal.log'), frame);
    const s2 = await EmbeddedStore.open({ dir });
    expect((await s2.get('f/new'))?.value).toEqual({ form: 'value after a newline' });
    expect((await s2.get('f/old'))?.value).toEqual({ form: 'json string' });
    expect(s2.stats.tornBytesRepaired).toBe(0);
    await s2.close();
  });

  it('the key index stays sorted through random inserts and deletes', () => {
    const idx = new SortedKeys();
    const ref = new Set<string>();
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 20_000; i++) {
      const k = `k/${Math.floor(rnd() * 5000)
        .toString()
        .padStart(5, '0')}`;
      if (rnd() < 0.7) {
        idx.insert(k);
        ref.add(k);
      } else {
        expect(idx.delete(k)).toBe(ref.delete(k));
      }
    }
    const want = [...ref].sort();
    expect([...idx]).toEqual(want);
    expect(idx.size).toBe(want.length);
    expect([...idx.from('k/02500')].slice(0, 3)).toEqual(want.filter((k) => k >= 'k/02500').slice(0, 3));
  });

  it('group commit: concurrent puts share fsyncs', async () => {
    const dir = await tempDir();
    const s = await EmbeddedStore.open({ dir });
    const syncsBefore = s.stats.syncs;
    await Promise.all(Array.from({ length: 200 }, (_, i) => s.put(`g/${i}`, i)));
    const syncs = s.stats.syncs - syncsBefore;
    expect(syncs).toBeGreaterThan(0);
    expect(syncs).toBeLessThan(20);
    expect((await s.list('g/')).items.length).toBe(200);
    await s.close();
  });

  it('loses leadership and refuses writes when another process breaks its lock', async () => {
    const dir = await tempDir();
    const s = await EmbeddedStore.open({ dir, lockCheckMs: 50 });
    const l = await s.campaign('ctl', 'me', {});
    // Simulate an operator (or a confused peer) replacing the lock file.
    await fs.writeFile(join(dir, 'LOCK'), JSON.stringify({ pid: 1, startTime: 'x', host: 'elsewhere', token: 'other', acquiredAt: 'now' }));
    await new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new Error('leadership loss not signalled')), 5000);
      l.signal.addEventListener('abort', () => (clearTimeout(t), res()), { once: true });
    });
    await expect(s.put('x', 1)).rejects.toThrow(/lost the store directory lock/);
    await s.close();
  });

  it('exports metrics to a registry when given one', async () => {
    const registry = new Registry();
    const s = await EmbeddedStore.open({ dir: await tempDir(), registry });
    await Promise.all(Array.from({ length: 20 }, (_, i) => s.put(`m/${i}`, i)));
    const l = await s.campaign('ctl', 'me', {});
    const text = await registry.metrics();
    expect(text).toMatch(/cello_store_operation_seconds_count\{op="put",backend="embedded"\} 20/);
    expect(text).toMatch(/cello_store_fsync_batch_writes_sum 20/);
    expect(text).toMatch(/cello_store_leader\{election="ctl"\} 1/);
    await l.resign();
    expect(await registry.metrics()).toMatch(/cello_store_leader\{election="ctl"\} 0/);
    await s.close();
  });

  it('names the field when the configuration is wrong', async () => {
    await expect(openStore({ kind: 'embedded', dir: '' })).rejects.toThrow(/store\.dir/);
    await expect(openStore({ kind: 'nope' } as never)).rejects.toThrow(/store\.kind/);
  });
});
