// The backup reader and restore writer on real stores: an embedded store read from its files
// while its owner keeps writing and compacting (every read is a state the store really had, and
// the final one is exactly its state), etcd read at one revision and restored into an embedded
// store (and back), and what a restore refuses.
import { randomUUID } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireCommand, startEtcd, waitExit, waitFor, type EtcdServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, StoreLockedError, type EmbeddedStore, type Store } from '../../src/store/index.js';
import { BACKUP_FORMAT, readBackup, readEmbeddedEntries, readStoreEntries, restoreEntries, unsealedSecretKeys, writeBackup, type StoreBackup } from '../../src/store/backup.js';

let etcd: EtcdServer;
const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'cello-backup-'));
  dirs.push(d);
  return d;
};
beforeAll(async () => {
  etcd = await startEtcd();
}, 90_000);
afterAll(async () => {
  await etcd?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const backupOf = (entries: StoreBackup['entries'], revision = 1): StoreBackup => ({
  format: BACKUP_FORMAT,
  createdAt: new Date().toISOString(),
  controllerVersion: 'test',
  controllerId: 'c1',
  source: 'embedded',
  revision,
  entries,
});

describe('store backup', () => {
  it('writes the backup on a filesystem without hard links (a FUSE mount) by an exclusive copy, still refusing an existing file', async () => {
    requireCommand('rclone', 'rclone');
    requireCommand('fusermount3', 'fuse3');
    const d = tmp();
    const src = join(d, 'src');
    const mnt = join(d, 'mnt');
    mkdirSync(src);
    mkdirSync(mnt);
    // rclone's mount of a local directory: a real FUSE filesystem, as for cloud storage, with no link().
    const rclone = spawn('rclone', ['mount', '--config', '/dev/null', '--vfs-cache-mode', 'writes', '--vfs-write-back', '0s', src, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    rclone.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    try {
      await waitFor('the rclone mount', () => readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} fuse.rclone `), { timeoutMs: 60_000, intervalMs: 100 }).catch((err: Error) => {
        throw new Error(`${err.message}; rclone: ${stderr}`);
      });
      // The premise: link() is refused there.
      writeFileSync(join(mnt, 'probe'), 'x');
      expect(() => linkSync(join(mnt, 'probe'), join(mnt, 'probe2'))).toThrow();
      const file = join(mnt, 'b.json');
      const entries = [{ key: 'pods/default/a', value: { n: 1 } }];
      await writeBackup(file, backupOf(entries, 7));
      const loaded = await readBackup(file);
      expect(loaded.entries).toEqual(entries);
      expect(loaded.revision).toBe(7);
      await expect(writeBackup(file, backupOf([]))).rejects.toThrow(/--out .*b\.json: the file exists/);
      expect((await readBackup(file)).entries).toEqual(entries);
      // No temporary file left behind, and the bytes reached the directory under the mount.
      expect(readdirSync(mnt).sort()).toEqual(['b.json', 'probe']);
    } finally {
      spawnSync('fusermount3', ['-u', mnt]);
      rclone.kill('SIGTERM');
      await waitExit(rclone, { timeoutMs: 20_000, what: 'rclone' });
    }
    expect(JSON.parse(readFileSync(join(src, 'b.json'), 'utf8'))).toMatchObject({ revision: 7 });
  }, 90_000);

  it('reads a locked embedded store from its files while it writes and compacts, consistently', async () => {
    const dir = tmp();
    // Tiny compaction threshold: the WAL is renamed and the snapshot replaced many times.
    const store = (await openStore({ kind: 'embedded', dir, compactBytes: 2048 })) as EmbeddedStore;
    let stop = false;
    let writer: Promise<void> | undefined;
    try {
      await expect(openStore({ kind: 'embedded', dir })).rejects.toBeInstanceOf(StoreLockedError);
      // Writer: counter/N holds N, and `last` names the highest N written. A consistent read
      // that sees last=N sees every counter up to N and none beyond.
      writer = (async () => {
        for (let n = 1; !stop && n < 100_000; n++) {
          await store.put(`counter/${String(n).padStart(6, '0')}`, { n, pad: 'x'.repeat(200) });
          await store.put('last', n);
          if (n % 7 === 0) await store.delete(`counter/${String(n - 3).padStart(6, '0')}`);
        }
      })();
      let reads = 0;
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline) {
        const { entries } = readEmbeddedEntries(dir);
        const last = entries.find((e) => e.key === 'last')?.value as number | undefined;
        const counters = entries.filter((e) => e.key.startsWith('counter/')).map((e) => (e.value as { n: number }).n);
        if (last !== undefined) {
          // Step n writes counter/n, then last=n, then (n a multiple of 7) deletes counter/n-3.
          const have = new Set(counters);
          expect(counters.every((n) => n <= last + 1)).toBe(true);
          for (let n = 1; n <= last; n++) {
            const deletedBy = (n + 3) % 7 === 0 ? n + 3 : undefined;
            if (deletedBy === undefined || deletedBy > last) expect(have.has(n), `counter ${n} with last=${last}`).toBe(true);
            else if (deletedBy < last) expect(have.has(n), `counter ${n} deleted before last=${last}`).toBe(false);
          }
        }
        reads++;
        await new Promise((r) => setTimeout(r, 5));
      }
      stop = true;
      await writer;
      expect(store.stats.compactions).toBeGreaterThan(2);
      expect(reads).toBeGreaterThan(10);
      const final = readEmbeddedEntries(dir);
      const listed = await readStoreEntries(store);
      expect(final.entries).toEqual(listed.entries);
      expect(final.revision).toBe(listed.revision);
    } finally {
      stop = true;
      await writer?.catch(() => {});
      await store.close();
    }
  }, 60_000);

  it('reads a store caught between a compaction renaming wal.log and opening the next one', async () => {
    const dir = tmp();
    const store = await openStore({ kind: 'embedded', dir });
    await store.put('pods/default/a', { n: 1 });
    await store.put('pods/default/b', { n: 2 });
    await store.delete('pods/default/a');
    await store.close();
    // The instant a reader in the controller's own process can be stuck at (the loop is blocked
    // by the synchronous read): the WAL is segment 1 and there is no wal.log yet.
    renameSync(join(dir, 'wal.log'), join(dir, 'wal.1.log'));
    const { entries } = readEmbeddedEntries(dir, 1);
    expect(entries).toEqual([{ key: 'pods/default/b', value: { n: 2 } }]);
  });

  it('moves a store from etcd into an embedded store and back, keys and values intact', async () => {
    const etcdStore = await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix: `/b-${randomUUID()}/` });
    let embedded: Store | undefined;
    let back: Store | undefined;
    try {
      await etcdStore.put('pods/default/web', { spec: { image: 'x' }, sealedSecrets: { v: 1, dek: 'aa', data: 'bb' } });
      await etcdStore.put('cells/cell-1', { state: 'ready' });
      await etcdStore.put('security/ca', { cert: 'pem' });
      const read = await readStoreEntries(etcdStore);
      expect(read.entries.map((e) => e.key)).toEqual(['cells/cell-1', 'pods/default/web', 'security/ca']);
      const file = join(tmp(), 'b.json');
      await writeBackup(file, { ...backupOf(read.entries, read.revision), source: 'etcd' });
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const loaded = await readBackup(file);
      embedded = await openStore({ kind: 'embedded', dir: tmp() });
      expect(await restoreEntries(embedded, loaded)).toBe(3);
      expect((await readStoreEntries(embedded)).entries).toEqual(read.entries);
      back = await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix: `/b-${randomUUID()}/` });
      await restoreEntries(back, { ...loaded, entries: (await readStoreEntries(embedded)).entries });
      expect((await readStoreEntries(back)).entries).toEqual(read.entries);
      // Into a store that holds anything: refused, nothing written.
      await expect(restoreEntries(back, backupOf([{ key: 'other', value: 1 }]))).rejects.toThrow(/store is not empty \(3 keys, e\.g\. cells\/cell-1\)/);
      expect(await back.get('other')).toBeUndefined();
    } finally {
      await etcdStore.close();
      await embedded?.close();
      await back?.close();
    }
  }, 60_000);

  it('names unsealed pod secrets, refuses to overwrite a file, and names the broken field of a bad backup', async () => {
    expect(
      unsealedSecretKeys([
        { key: 'pods/default/a', value: { secrets: { s: { token: 'x' } } } },
        { key: 'pods/default/b', value: { sealedSecrets: { v: 1 } } },
        { key: 'pods/default/c', value: { secrets: {} } },
        { key: 'cells/x', value: { secrets: { s: 1 } } },
      ]),
    ).toEqual(['pods/default/a']);
    const d = tmp();
    const file = join(d, 'b.json');
    await writeBackup(file, backupOf([]));
    await expect(writeBackup(file, backupOf([]))).rejects.toThrow(/the file exists/);
    writeFileSync(file + '.bad', '{"format":"cello-store-backup/v2"}');
    await expect(readBackup(file + '.bad')).rejects.toThrow(/format: /);
    writeFileSync(file + '.trunc', '{"format":');
    await expect(readBackup(file + '.trunc')).rejects.toThrow(/not a readable backup/);
    writeFileSync(file + '.key', JSON.stringify(backupOf([{ key: '', value: 1 }])));
    await expect(readBackup(file + '.key')).rejects.toThrow(/entries\.0\.key/);
  });
});
