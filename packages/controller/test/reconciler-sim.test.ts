// The reconciler's scheduling decisions, in process, with the real embedded store and API but
// the SIMULATED provider (no real cells): capacity fallback to the next candidate, and a pod
// that fits no type reported Unschedulable with the reason.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EventEmitter } from 'node:events';
import { CellNoticeKind, GetStatusResponse, PodPhase, ConditionStatus, RestartPolicy, WatchStatusEvent } from '@cello/proto/cell';
import { CellState } from '../src/cells/state.js';
import { Events } from '../src/cells/schema.js';
import { waitFor } from '@cello/testkit';
import { openStore, type Store } from '../src/store/index.js';
import { SimulatedProvider } from '../src/providers/simulated/simulated.js';
import { CapacityError, type LaunchRequest, type LaunchedInstance } from '../src/providers/provider.js';
import { Reconciler } from '../src/reconcile/reconciler.js';
import type { AgentAccess } from '../src/agents/pool.js';
import { ControllerApi } from '../src/api/server.js';
import { catalogTypes, localCatalog } from '../src/catalog/catalog.js';
import { silentLogger } from '../src/obs/logger.js';

class NoNanoProvider extends SimulatedProvider {
  readonly tried: string[] = [];
  override async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    this.tried.push(req.instanceType);
    if (req.instanceType === 'local.nano') throw new CapacityError('InsufficientInstanceCapacity (simulated)', req.instanceType);
    return super.launch(req);
  }
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(wrapAgents: (a: AgentAccess) => AgentAccess = (a) => a) {
  const dir = mkdtempSync(join(tmpdir(), 'cello-rec-sim-'));
  const store: Store = await openStore({ kind: 'embedded', dir });
  const types = catalogTypes(localCatalog());
  const provider = new NoNanoProvider({ types });
  const agents = wrapAgents(provider.agentPool() as unknown as AgentAccess);
  const rec = new Reconciler({ store, provider, controllerId: 'sim', agents, log: silentLogger(), tickMs: 100 });
  const api = new ControllerApi({ store, agents, log: silentLogger(), controllerId: 'sim', providerName: provider.name, instanceTypes: types });
  await rec.start();
  cleanups.push(async () => {
    await rec.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { store, provider, rec, api };
}

const pod = (name: string, extra = '') => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  containers:
  - name: main
    image: example.invalid/app:1
${extra}`;

describe('reconciler (simulated provider)', () => {
  it('retries a booting cell whose agent does not answer yet with per-key back-off, then binds it', async () => {
    // The first four GetInfo calls fail (an agent still starting): each retry waits twice as
    // long as the one before (200 ms, 400, 800, ...; at least: timers never fire early), where
    // the reconciler used to poll at a fixed 200 ms.
    const calls: number[] = [];
    let failuresLeft = 4;
    const { api } = await setup((inner) => ({
      ...inner,
      get: (id, address) => {
        const client = inner.get(id, address);
        return new Proxy(client, {
          get(target, prop, receiver) {
            if (prop !== 'getInfo') return Reflect.get(target, prop, receiver);
            return (req: unknown, md: unknown, opts: unknown, cb: (err: unknown, res?: unknown) => void) => {
              calls.push(performance.now());
              if (failuresLeft-- > 0) return cb(Object.assign(new Error('14 UNAVAILABLE: agent not up yet'), { code: 14, details: 'agent not up yet' }));
              return (target.getInfo as unknown as (...a: unknown[]) => void).call(target, req, md, opts, cb);
            };
          },
        });
      },
    }));
    await api.applyPod({ manifest: pod('slow-agent'), namespace: '', dryRun: false });
    await waitFor(
      'running',
      async () => {
        const x = await api.getPod({ namespace: 'default', name: 'slow-agent' });
        return x.status?.phase === PodPhase.POD_PHASE_RUNNING ? x : undefined;
      },
      { timeoutMs: 30_000 },
    );
    expect(calls.length).toBeGreaterThanOrEqual(5);
    // Gaps under 50 ms are re-runs the cell's own state changes queued, not retries.
    const retries = calls
      .slice(1, 5)
      .map((t, i) => t - calls[i]!)
      .filter((gap) => gap >= 50);
    expect(retries.length).toBeGreaterThanOrEqual(3);
    retries.forEach((gap, i) => expect(gap).toBeGreaterThanOrEqual(200 * 2 ** i - 5));
  });

  it("applies a cell's statuses in the order the agent sent them, even when the older one's write is slow", async () => {
    // The agent reports ContainerCreating and then Running back to back, and the first write
    // is held up in the store (a busy machine). Handled side by side, Running landed first and
    // ContainerCreating, retried after losing its compare-and-swap, then overwrote it: the pod
    // stayed ContainerCreating although its container had started.
    const { api, store } = await setup((inner) => ({
      ...inner,
      get: (id, address) => {
        const client = inner.get(id, address);
        return new Proxy(client, {
          get(target, prop, receiver) {
            if (prop !== 'watchStatus') return Reflect.get(target, prop, receiver);
            return () => {
              const real = (target.watchStatus as unknown as () => EventEmitter & { cancel(): void })();
              const out = Object.assign(new EventEmitter(), { cancel: () => real.cancel() });
              for (const ev of ['metadata', 'error', 'end']) real.on(ev, (...a: unknown[]) => out.emit(ev, ...a));
              real.on('data', (ev: WatchStatusEvent) => {
                const st = ev.kind?.$case === 'status' ? ev.kind.value : undefined;
                if (st?.status?.phase === PodPhase.POD_PHASE_RUNNING) {
                  const creating = GetStatusResponse.fromPartial({
                    ...st,
                    status: {
                      ...st.status,
                      phase: PodPhase.POD_PHASE_PENDING,
                      containerStatuses: st.status.containerStatuses.map((c) => ({
                        ...c,
                        ready: false,
                        started: false,
                        state: { state: { $case: 'waiting', value: { reason: 'ContainerCreating', message: '' } } },
                      })),
                    },
                  });
                  out.emit('data', WatchStatusEvent.fromPartial({ kind: { $case: 'status', value: creating } }));
                  // On the next turn, so the two are not simply collapsed into the newer one.
                  setImmediate(() => out.emit('data', ev));
                  return;
                }
                out.emit('data', ev);
              });
              return out;
            };
          },
        });
      },
    }));
    const put = store.put.bind(store);
    let held = 0;
    store.put = async (key, value, opts) => {
      if (key.startsWith('pods/') && JSON.stringify(value).includes('ContainerCreating') && held++ === 0) await new Promise((r) => setTimeout(r, 300));
      return put(key, value, opts);
    };
    await api.applyPod({ manifest: pod('in-order'), namespace: '', dryRun: false });
    await waitFor('the older status written (held 300 ms)', () => held > 0, { timeoutMs: 30_000 });
    // Both writes have had time to land.
    await new Promise((r) => setTimeout(r, 1000));
    const x = await api.getPod({ namespace: 'default', name: 'in-order' });
    expect(x.status?.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(x.status?.containerStatuses[0]?.state?.state?.$case).toBe('running');
  });

  it('falls back to the next cheapest type when a launch has no capacity', async () => {
    const { provider, api } = await setup();
    await api.applyPod({ manifest: pod('fallback'), namespace: '', dryRun: false });
    const p = await waitFor(
      'running',
      async () => {
        const x = await api.getPod({ namespace: 'default', name: 'fallback' });
        return x.status?.phase === PodPhase.POD_PHASE_RUNNING ? x : undefined;
      },
      { timeoutMs: 20_000 },
    );
    expect(provider.tried.slice(0, 2)).toEqual(['local.nano', 'local.micro']);
    expect(p.instanceType).toBe('local.micro');
  });

  it('reports a pod that fits no type as Unschedulable, with the reason', async () => {
    const { api } = await setup();
    await api.applyPod({ manifest: pod('huge', '    resources: { requests: { memory: 64Gi } }\n'), namespace: '', dryRun: false });
    const p = await waitFor(
      'unschedulable',
      async () => {
        const x = await api.getPod({ namespace: 'default', name: 'huge' });
        const c = x.status?.conditions.find((k) => k.type === 'PodScheduled');
        return c?.status === ConditionStatus.CONDITION_STATUS_FALSE && c.reason === 'Unschedulable' ? x : undefined;
      },
      { timeoutMs: 20_000 },
    );
    const c = p.status!.conditions.find((k) => k.type === 'PodScheduled')!;
    expect(c.message).toMatch(/NoFittingInstanceType: no instance type fits .*65600 MiB memory/);
    expect(p.status!.phase).toBe(PodPhase.POD_PHASE_PENDING);
    expect(p.cellId).toBe('');
  });
});

describe('spot interruption (simulated provider and agents)', () => {
  it('moves the pod to a new cell before the instance goes away, whatever its restart policy', async () => {
    const { provider, api, store } = await setup();
    await api.applyPod({ manifest: pod('spotty').replace('spec:\n', 'spec:\n  restartPolicy: Never\n'), namespace: '', dryRun: false });
    const running = (not?: string) =>
      waitFor(
        'running',
        async () => {
          const x = await api.getPod({ namespace: 'default', name: 'spotty' });
          return x.status?.phase === PodPhase.POD_PHASE_RUNNING && x.cellId && x.cellId !== not ? x : undefined;
        },
        { timeoutMs: 20_000 },
      );
    const first = await running();
    expect(first.spec?.restartPolicy).toBe(RestartPolicy.RESTART_POLICY_NEVER);
    provider.notify(first.cellId, { kind: CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION, action: 'terminate', actionAt: new Date(Date.now() + 120_000) });
    const moved = await running(first.cellId);
    expect(moved.cellId).not.toBe(first.cellId);
    expect(moved.status?.containerStatuses[0]?.restartCount).toBe(1);
    // The interrupted cell is drained and ended; only the new one remains.
    await waitFor(
      'old cell terminated',
      async () => {
        const cells = await api.listCells();
        const old = cells.find((c) => c.id === first.cellId);
        return !old || old.state === CellState.CELL_STATE_TERMINATED ? true : undefined;
      },
      { timeoutMs: 20_000 },
    );
    expect(provider.size).toBe(1);
    const events = await new Events(store).list({ namespace: 'default', name: 'spotty' }, 0);
    expect(events.map((e) => e.reason)).toContain('SpotInterruption');
  });
});

describe('garbage collection after the store is wiped (simulated provider)', () => {
  it('finds every instance carrying its controller ID and terminates it', async () => {
    const { provider, api, rec } = await setup();
    for (const n of ['g1', 'g2']) await api.applyPod({ manifest: pod(n), namespace: '', dryRun: false });
    await waitFor('two cells', () => provider.size === 2, { timeoutMs: 20_000 });
    await rec.stop();
    // A new, empty store: the controller has no record of anything, only its ID.
    const dir = mkdtempSync(join(tmpdir(), 'cello-rec-sim-wiped-'));
    const wiped = await openStore({ kind: 'embedded', dir });
    const fresh = new Reconciler({ store: wiped, provider, controllerId: 'sim', agents: provider.agentPool(), log: silentLogger(), tickMs: 100, gcIntervalSeconds: 3600 });
    try {
      // Another controller's instance must survive.
      await provider.launch({
        cellId: 'cell-other',
        instanceType: 'local.micro',
        spot: false,
        tags: { 'cello.io/controller-id': 'someone-else', 'cello.io/cell-id': 'cell-other' },
        bootstrap: { caCertPem: '', token: 't', tokenExpiresAt: '', controllerId: 'someone-else', cellId: 'cell-other', agentPort: 0 },
      });
      const collected = await fresh.collectGarbage();
      expect(collected).toHaveLength(2);
      expect(await provider.listOwned('sim')).toHaveLength(0);
      expect(await provider.listOwned('someone-else')).toHaveLength(1);
    } finally {
      await fresh.stop();
      await wiped.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
