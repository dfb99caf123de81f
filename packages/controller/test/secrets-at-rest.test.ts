// Pod secrets are sealed in the store (envelope: a data key per write, wrapped with the
// configured key), on both backends: nothing of the secret is in the embedded store's files or
// in etcd's raw values, while the agent still gets it in ApplyPod. The real API, reconciler,
// embedded store and etcd; the simulated provider stands in for cells.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { startEtcd, waitFor, type EtcdServer } from '@cello/testkit';
import { openStore, type Store } from '../src/store/index.js';
import { SimulatedProvider } from '../src/providers/simulated/simulated.js';
import { Reconciler } from '../src/reconcile/reconciler.js';
import { ControllerApi } from '../src/api/server.js';
import { catalogTypes, localCatalog } from '../src/catalog/catalog.js';
import { silentLogger } from '../src/obs/logger.js';
import { SecretBox, UnsealError } from '../src/security/index.js';
import { readPodSecrets, type PodRecordWithData } from '../src/cells/pod-secrets.js';

const SECRET = `s3cr3t-${randomUUID()}`;
const manifest = (name: string) => `apiVersion: v1
kind: Secret
metadata: { name: creds }
stringData: { token: ${SECRET} }
---
apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  containers:
  - name: main
    image: example.invalid/app:1
    env:
    - name: TOKEN
      valueFrom: { secretKeyRef: { name: creds, key: token } }
`;

/** Every form the secret could take in a JSON record: as is, and base64 (bytes fields). */
const needles = [SECRET, Buffer.from(SECRET).toString('base64'), Buffer.from(SECRET).toString('base64').slice(0, 24)];

function filesUnder(dir: string): Buffer[] {
  const out: Buffer[] = [];
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push(readFileSync(p));
  }
  return out;
}

const contains = (blobs: Buffer[]) => blobs.some((b) => needles.some((n) => b.includes(n)));

let etcd: EtcdServer;
let raw: Etcd3;
beforeAll(async () => {
  etcd = await startEtcd();
  raw = new Etcd3({ hosts: etcd.endpoints });
}, 60_000);
afterAll(async () => {
  raw?.close();
  await etcd?.stop();
});

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function controller(store: Store, box: SecretBox | undefined) {
  const types = catalogTypes(localCatalog());
  const provider = new SimulatedProvider({ types });
  const agents = provider.agentPool();
  const rec = new Reconciler({ store, provider, controllerId: 'sealed', agents, log: silentLogger(), tickMs: 100, ...(box ? { secretBox: box } : {}) });
  const api = new ControllerApi({
    store,
    agents,
    log: silentLogger(),
    controllerId: 'sealed',
    providerName: provider.name,
    instanceTypes: types,
    ...(box ? { secretBox: box } : {}),
  });
  await rec.start();
  cleanups.push(async () => {
    await rec.stop();
    await store.close();
  });
  return { api, provider };
}

/** Applies the pod and waits until the simulated agent got it: the secret went through ApplyPod. */
async function applyAndDispatch(api: ControllerApi, provider: SimulatedProvider, name: string): Promise<void> {
  await api.applyPod({ manifest: manifest(name), namespace: '', dryRun: false });
  const pod = await waitFor(
    `${name} running`,
    async () => {
      const p = await api.getPod({ namespace: 'default', name });
      return p.status?.phase === PodPhase.POD_PHASE_RUNNING ? p : undefined;
    },
    { timeoutMs: 20_000 },
  );
  const sent = provider.lastApply(pod.cellId);
  expect(Buffer.from(sent!.secrets['creds']!.data['token']!).toString()).toBe(SECRET);
}

describe('secrets at rest', () => {
  it('embedded store: no plaintext secret in its files; a store without a key would show it', async () => {
    const key = randomBytes(32).toString('base64');
    const dir = mkdtempSync(join(tmpdir(), 'cello-sealed-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const store = await openStore({ kind: 'embedded', dir: join(dir, 'sealed') });
    const { api, provider } = await controller(store, new SecretBox(key));
    await applyAndDispatch(api, provider, 'sealed');
    // Re-applying the same manifest is a no-op (the sealed data compares equal once opened).
    const again = await api.applyPod({ manifest: manifest('sealed'), namespace: '', dryRun: false });
    expect(again.metadata?.generation).toBe(1);
    const rec = (await store.get<PodRecordWithData>('pods/default/sealed'))!.value;
    expect(rec.secrets).toBeUndefined();
    expect(rec.sealedSecrets?.v).toBe(1);
    expect(contains(filesUnder(join(dir, 'sealed')))).toBe(false);

    // The control: the same flow without a key leaves the secret readable on disk, so the
    // search above would have found it.
    const plainStore = await openStore({ kind: 'embedded', dir: join(dir, 'plain') });
    const plain = await controller(plainStore, undefined);
    await applyAndDispatch(plain.api, plain.provider, 'plain');
    expect(contains(filesUnder(join(dir, 'plain')))).toBe(true);
  });

  it('etcd: no plaintext secret in any raw value; the sealed record opens only with its key and for its pod', async () => {
    const key = randomBytes(32).toString('base64');
    const prefix = `/sealed-${randomUUID()}/`;
    const store = await openStore({ kind: 'etcd', endpoints: etcd.endpoints, prefix });
    const box = new SecretBox(key);
    const { api, provider } = await controller(store, box);
    await applyAndDispatch(api, provider, 'sealed');
    const values = Object.values(await raw.getAll().prefix(prefix).buffers());
    expect(values.length).toBeGreaterThan(0);
    expect(contains(values)).toBe(false);

    const rec = (await store.get<PodRecordWithData>('pods/default/sealed'))!.value;
    expect(readPodSecrets(rec, 'pods/default/sealed', box)).toHaveProperty('creds');
    // Another key cannot open it, and it does not open as another pod's secrets.
    expect(() => readPodSecrets(rec, 'pods/default/sealed', new SecretBox(randomBytes(32)))).toThrow(UnsealError);
    expect(() => readPodSecrets(rec, 'pods/default/sealed', new SecretBox(randomBytes(32)))).toThrow(/security\.caEncryptionKey|encryptionKey/);
    expect(() => readPodSecrets(rec, 'pods/default/other', box)).toThrow(UnsealError);
    expect(() => readPodSecrets(rec, 'pods/default/sealed', undefined)).toThrow(/no encryption key is configured/);
  });
});
