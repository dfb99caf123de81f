// A change of a pod's labels or annotations alone reaches its cell, as a kubelet sees the Pod's
// new metadata: the cell's env (fieldRef) and downward API read them (the e2e spec "a failing
// subpath expansion can be modified during the lifecycle of a container" fixes its pod with an
// annotation). The real API, reconciler and embedded store; the simulated provider for cells.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { openStore } from '../src/store/index.js';
import { SimulatedProvider } from '../src/providers/simulated/simulated.js';
import { Reconciler } from '../src/reconcile/reconciler.js';
import { ControllerApi } from '../src/api/server.js';
import { catalogTypes, localCatalog } from '../src/catalog/catalog.js';
import { silentLogger } from '../src/obs/logger.js';

const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const manifest = (annotation: string) => `apiVersion: v1
kind: Pod
metadata: { name: meta, annotations: { mysubpath: "${annotation}" } }
spec:
  containers:
  - name: main
    image: example.invalid/app:1
`;

describe('pod metadata updates', () => {
  it('an annotation change alone is a new generation, applied to the cell; the same manifest again is none', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cello-meta-'));
    const store = await openStore({ kind: 'embedded', dir: join(dir, 'store') });
    const types = catalogTypes(localCatalog());
    const provider = new SimulatedProvider({ types });
    const agents = provider.agentPool();
    const rec = new Reconciler({ store, provider, controllerId: 'meta', agents, log: silentLogger(), tickMs: 100 });
    const api = new ControllerApi({ store, agents, log: silentLogger(), controllerId: 'meta', providerName: provider.name, instanceTypes: types });
    await rec.start();
    cleanups.push(async () => {
      await rec.stop();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    });
    await api.applyPod({ manifest: manifest('one'), namespace: '', dryRun: false });
    const pod = await waitFor(
      'the pod running',
      async () => {
        const p = await api.getPod({ namespace: 'default', name: 'meta' });
        return p.status?.phase === PodPhase.POD_PHASE_RUNNING ? p : undefined;
      },
      { timeoutMs: 20_000 },
    );
    expect(provider.lastApply(pod.cellId)!.pod!.metadata!.annotations['mysubpath']).toBe('one');
    expect((await api.applyPod({ manifest: manifest('one'), namespace: '', dryRun: false })).metadata?.generation).toBe(1);
    expect((await api.applyPod({ manifest: manifest('two'), namespace: '', dryRun: false })).metadata?.generation).toBe(2);
    await waitFor('the new annotation on the cell', () => provider.lastApply(pod.cellId)?.pod?.metadata?.annotations['mysubpath'] === 'two', { timeoutMs: 20_000 });
    expect(provider.lastApply(pod.cellId)!.generation).toBe(2);
  });
});
