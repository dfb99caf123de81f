// Backup and restore of the controller's state, end to end: `controller backup` beside a running
// controller (embedded store, read without its lock), the controller stopped with its cells
// left running, `controller restore` into a brand-new store, and a new controller on it that
// adopts the same cells (same agent process, no relaunch) and reaches them with the restored CA.
// The backup holds the pod's secret only sealed. The real daemon, local provider, runc, registry.
import { randomUUID } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { CellState } from '@cello/proto/controller';
import { startEtcd } from '@cello/testkit';
import { parse, stringify } from 'yaml';
import { Cluster, controllerCli, podWithSecret, secretForms, startFixtureRegistry, type Registry } from './helpers/cluster.js';
import { openStore } from '../src/store/index.js';
import { SecretBox } from '../src/security/index.js';
import { readPodSecrets, type PodRecordWithData } from '../src/cells/pod-secrets.js';

const SECRET = `restore-s3cr3t-${randomUUID()}`;
const MANIFEST = podWithSecret('keeper', SECRET, 'echo keeper-up; while true; do sleep 1; done');
const needles = secretForms(SECRET);
const running = (p: { status?: { phase: PodPhase } }) => p.status?.phase === PodPhase.POD_PHASE_RUNNING;

let registry: Registry;
let a: Cluster | undefined;
let b: Cluster | undefined;
beforeAll(async () => {
  registry = await startFixtureRegistry();
}, 120_000);
afterAll(async () => {
  await b?.stop();
  await a?.stop();
  await registry?.server.stop();
}, 120_000);

describe('controller backup / restore', () => {
  it('restores pods, cells, events and sealed secrets into a new store; the new controller adopts the running cell', async () => {
    a = new Cluster({ registry, gcIntervalSeconds: 2 });
    await a.start();
    expect((await a.cellctl(['apply', '-f', a.manifest('keeper', MANIFEST)])).code).toBe(0);
    const before = await a.waitPod('keeper', 'running', running, 90_000);
    const cellId = before.cellId;
    const agentPid = a.agentPid(cellId);

    // Online: the running controller holds the embedded store's lock.
    const out = join(a.dir, 'backup.json');
    const bk = await controllerCli(['backup', '-c', a.configPath, '--out', out]);
    expect(bk.stderr).toBe('');
    expect(bk.code).toBe(0);
    expect(bk.stdout).toMatch(/^wrote .*backup\.json: \d+ keys at revision \d+ \(.*cells 1.*pods 1.*\)/);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const text = readFileSync(out, 'utf8');
    for (const n of needles) expect(text.includes(n), `secret form ${n} in the backup`).toBe(false);
    const backup = JSON.parse(text) as { controllerId: string; entries: { key: string; value: unknown }[] };
    expect(backup.controllerId).toBe(a.controllerId);
    const keys = backup.entries.map((e) => e.key);
    expect(keys).toContain('pods/default/keeper');
    expect(keys).toContain(`cells/${cellId}`);
    expect(keys).toContain('security/ca');
    expect(keys.some((k) => k.startsWith('events/pod/default/keeper/'))).toBe(true);
    expect((backup.entries.find((e) => e.key === 'pods/default/keeper')!.value as PodRecordWithData).sealedSecrets).toBeDefined();
    // A second backup to the same file is refused, never overwrites.
    const again = await controllerCli(['backup', '-c', a.configPath, '--out', out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/--out .*backup\.json: the file exists/);

    // The controller goes away; its cell keeps running.
    await a.stopController();
    expect(() => process.kill(agentPid, 0)).not.toThrow();

    // A new controller: same controllerId, key and cells, a store that has never seen them.
    b = new Cluster({ registry, gcIntervalSeconds: 2, peer: a });
    await b.writeConfig();
    const restored = await controllerCli(['restore', '-c', b.configPath, '--from', out]);
    expect(restored.stderr).toBe('');
    expect(restored.code).toBe(0);
    expect(restored.stdout).toMatch(/^restored \d+ keys into the embedded store/);
    // Restoring twice is refused: the store is no longer empty.
    const twice = await controllerCli(['restore', '-c', b.configPath, '--from', out]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toMatch(/store is not empty/);

    // The secret came back sealed, and opens with the configured key under the same store key.
    const store = await openStore({ kind: 'embedded', dir: b.storeDir });
    try {
      const rec = (await store.get<PodRecordWithData>('pods/default/keeper'))!.value;
      expect(rec.sealedSecrets).toBeDefined();
      expect(rec.secrets).toBeUndefined();
      const opened = readPodSecrets(rec, 'pods/default/keeper', new SecretBox(readFileSync(b.keyFile(), 'utf8').trim()));
      expect(needles.some((n) => JSON.stringify(opened).includes(n))).toBe(true);
    } finally {
      await store.close();
    }

    await b.start();
    const after = await b.waitPod('keeper', 'running after restore', running, 60_000);
    expect(after.cellId).toBe(cellId);
    // Adopted, not replaced: past several GC passes the same agent process serves the pod.
    await new Promise((r) => setTimeout(r, 6_000));
    expect(b.agentPid(cellId)).toBe(agentPid);
    expect(() => process.kill(agentPid, 0)).not.toThrow();
    const cells = (await b.cells()).filter((c) => c.state !== CellState.CELL_STATE_TERMINATED);
    expect(cells.map((c) => c.id)).toEqual([cellId]);
    expect((await b.provider.listOwned(b.controllerId)).map((i) => i.tags['cello.io/cell-id'])).toEqual([cellId]);
    // The restored CA still speaks mTLS to the agent: the pod's logs come through it.
    const logs = await b.cellctl(['logs', 'keeper']);
    expect(logs.stderr).toBe('');
    expect(logs.stdout).toContain('keeper-up');
    expect((await b.events('keeper')).length).toBeGreaterThan(0);
  }, 300_000);

  it('backs up a controller on etcd while it runs, and restores into an empty prefix, key for key', async () => {
    const etcd = await startEtcd();
    const c = new Cluster({ registry, store: { kind: 'etcd', endpoints: etcd.endpoints, prefix: '/cello-a/' } });
    try {
      await c.start();
      const out = join(c.dir, 'etcd-backup.json');
      const bk = await controllerCli(['backup', '-c', c.configPath, '--out', out]);
      expect(bk.stderr).toBe('');
      expect(bk.code).toBe(0);
      const backup = JSON.parse(readFileSync(out, 'utf8')) as { source: string; entries: { key: string; value: unknown }[] };
      expect(backup.source).toBe('etcd');
      expect(backup.entries.map((e) => e.key)).toContain('security/ca');
      // The same controller's configuration on another prefix of the same etcd.
      const cfg = parse(readFileSync(c.configPath, 'utf8')) as { store: { prefix: string } };
      cfg.store.prefix = '/cello-b/';
      const restoredConfig = join(c.dir, 'restored.yaml');
      writeFileSync(restoredConfig, stringify(cfg));
      const rs = await controllerCli(['restore', '-c', restoredConfig, '--from', out]);
      expect(rs.stderr).toBe('');
      expect(rs.stdout).toMatch(/^restored \d+ keys into the etcd store/);
      const store = await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix: '/cello-b/' });
      try {
        const { items } = await store.list('');
        expect(items.map((kv) => ({ key: kv.key, value: kv.value }))).toEqual(backup.entries);
      } finally {
        await store.close();
      }
    } finally {
      await c.stop();
      await etcd.stop();
    }
  }, 180_000);

  it('refuses a backup of another controllerId, under another key, or malformed, naming the field', async () => {
    const c = new Cluster({ registry, controllerId: 'restore-other' });
    try {
      await c.writeConfig();
      const src = join(c.dir, 'src.json');
      const good = {
        format: 'cello-store-backup/v1',
        createdAt: new Date().toISOString(),
        controllerVersion: 'x',
        controllerId: 'restore-other',
        source: 'embedded',
        revision: 1,
        entries: [{ key: 'pods/default/x', value: {} }],
      };
      const restoreWith = async (doc: unknown) => {
        writeFileSync(src, JSON.stringify(doc));
        return controllerCli(['restore', '-c', c.configPath, '--from', src]);
      };
      const wrongId = await restoreWith({ ...good, controllerId: 'someone-else' });
      expect(wrongId.code).toBe(1);
      expect(wrongId.stderr).toMatch(/made by controllerId someone-else, this configuration's controllerId is restore-other/);
      const badField = await restoreWith({ ...good, revision: -1 });
      expect(badField.stderr).toMatch(/revision: /);
      const extra = await restoreWith({ ...good, entries: [{ key: 'a', value: 1, modRevision: 3 }] });
      expect(extra.stderr).toMatch(/entries\.0/);
      const dup = await restoreWith({ ...good, entries: [good.entries[0], good.entries[0]] });
      expect(dup.stderr).toMatch(/key pods\/default\/x appears twice/);
      // A CA sealed under another key (taken from the first test's backup, another key file).
      const first = JSON.parse(readFileSync(join(a!.dir, 'backup.json'), 'utf8')) as typeof good & { entries: { key: string; value: unknown }[] };
      const foreignCa = await restoreWith({ ...good, entries: first.entries.filter((e) => e.key === 'security/ca') });
      expect(foreignCa.code).toBe(1);
      expect(foreignCa.stderr).toMatch(/encryption key .* does not open the backup's CA/);
      const ok = await restoreWith(good);
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
    } finally {
      await c.stop();
    }
  }, 120_000);
});
