// "Why is my pod Pending": each pod's stage, deadline, attempts and last error, kept in the store
// with the pod, and every deadline of the cell state machine (launch, boot, drain, terminate)
// exercised. In process: the real embedded store, reconciler and API; the SIMULATED provider
// (no real cells), given faults here: launches without capacity or that never answer, agents
// that never answer or never stop their pod, terminations that never finish.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Metadata } from '@grpc/grpc-js';
import { PodPhase } from '@cello/proto/cell';
import type { Cell, PodObject } from '@cello/proto/controller';
import { waitFor } from '@cello/testkit';
import { CellState } from '../src/cells/state.js';
import { Events } from '../src/cells/schema.js';
import { openStore, type Store } from '../src/store/index.js';
import { SimulatedProvider } from '../src/providers/simulated/simulated.js';
import { CapacityError, type LaunchRequest, type LaunchedInstance } from '../src/providers/provider.js';
import { Reconciler } from '../src/reconcile/reconciler.js';
import type { AgentAccess } from '../src/agents/pool.js';
import { ControllerApi } from '../src/api/server.js';
import { catalogTypes, localCatalog } from '../src/catalog/catalog.js';
import { silentLogger } from '../src/obs/logger.js';
import { describePod, podStatusWord } from '../src/cellctl/format.js';
import { progressCondition } from '../src/k8s/node/status.js';

/** The simulated provider with faults a test turns on. */
class FaultyProvider extends SimulatedProvider {
  /** Launches that fail with no capacity. */
  noCapacity = 0;
  /** Launches that never answer (until release()). */
  hangLaunches = 0;
  /** Terminations that never answer (until release()). */
  hangTerminate = false;
  private readonly hung: Array<() => void> = [];

  override async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    if (this.noCapacity > 0) {
      this.noCapacity--;
      throw new CapacityError(`InsufficientInstanceCapacity: no ${req.instanceType} capacity in the zone (simulated)`, req.instanceType);
    }
    if (this.hangLaunches > 0) {
      this.hangLaunches--;
      await new Promise<void>((resolve) => this.hung.push(resolve));
      throw new Error('launch released by the test');
    }
    return super.launch(req);
  }

  override async terminate(ids: string[]): Promise<void> {
    if (this.hangTerminate) await new Promise<void>((resolve) => this.hung.push(resolve));
    return super.terminate(ids);
  }

  release(): void {
    for (const r of this.hung.splice(0)) r();
  }
}

/** Agent faults: cells whose agent never answers GetInfo (never boots), and never answers DeletePod (never drains). */
interface AgentFaults {
  silent: Set<string>;
  /** The next cell to ask GetInfo joins `silent`. */
  silenceNext: boolean;
  hangDelete: boolean;
}

function faultyAgents(inner: AgentAccess, f: AgentFaults): AgentAccess {
  return {
    ...inner,
    get: (id, address) => {
      const client = inner.get(id, address);
      return new Proxy(client, {
        get(target, prop, receiver) {
          if (prop === 'getInfo') {
            return (req: unknown, md: Metadata, opts: unknown, cb: (err: unknown, res?: unknown) => void) => {
              if (f.silenceNext) {
                f.silenceNext = false;
                f.silent.add(id);
              }
              if (f.silent.has(id)) return cb(Object.assign(new Error('14 UNAVAILABLE: no route to agent'), { code: 14, details: 'no route to agent' }));
              return (target.getInfo as unknown as (...a: unknown[]) => void).call(target, req, md, opts, cb);
            };
          }
          if (prop === 'deletePod' && f.hangDelete) return () => undefined; // never answers
          return Reflect.get(target, prop, receiver);
        },
      });
    },
  };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'cello-progress-'));
  const store: Store = await openStore({ kind: 'embedded', dir });
  const types = catalogTypes(localCatalog());
  const provider = new FaultyProvider({ types });
  const faults: AgentFaults = { silent: new Set(), silenceNext: false, hangDelete: false };
  const agents = faultyAgents(provider.agentPool() as unknown as AgentAccess, faults);
  const timeouts = { createSeconds: 1, bootSeconds: 1, drainSlackSeconds: 1, terminateSeconds: 1 };
  const rec = new Reconciler({ store, provider, controllerId: 'progress', agents, log: silentLogger(), tickMs: 100, timeouts });
  const api = new ControllerApi({ store, agents, log: silentLogger(), controllerId: 'progress', providerName: provider.name, instanceTypes: types });
  await rec.start();
  cleanups.push(async () => {
    provider.release();
    await rec.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const get = (name: string) => api.getPod({ namespace: 'default', name });
  const waitPod = (name: string, what: string, pred: (p: PodObject) => boolean, timeoutMs = 20_000) =>
    waitFor(
      `${name} ${what}`,
      async () => {
        const p = await get(name);
        return pred(p) ? p : undefined;
      },
      { timeoutMs, intervalMs: 50 },
    );
  const waitCell = (what: string, pred: (c: Cell) => boolean) => waitFor(`a cell ${what}`, async () => (await api.listCells()).find(pred), { timeoutMs: 20_000, intervalMs: 50 });
  return { store, provider, faults, rec, api, get, waitPod, waitCell };
}

const pod = (name: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: example.invalid/app:1
`;

const running = (p: PodObject) => p.status?.phase === PodPhase.POD_PHASE_RUNNING;
const stages = (p: PodObject) => p.progress?.history.map((h) => h.stage) ?? [];

describe('pod progress (simulated provider with faults)', () => {
  it('no capacity: Launching (InsufficientInstanceCapacity, retry in Ns), attempts counted, then Running with the whole timeline', async () => {
    const { provider, api, waitPod, store } = await setup();
    provider.noCapacity = 1000;
    await api.applyPod({ manifest: pod('web'), namespace: '', dryRun: false });
    const waiting = await waitPod('web', 'waiting to retry its launch', (p) => !!p.progress?.lastError?.retryAt && p.progress.lastError.retryAt.getTime() > Date.now());
    expect(waiting.progress).toMatchObject({ stage: 'Launching', lastError: { reason: 'InsufficientInstanceCapacity', stage: 'Launching' } });
    expect(waiting.progress!.attempts).toBeGreaterThanOrEqual(1);
    expect(waiting.progress!.lastError!.message).toMatch(/local\.\w+: InsufficientInstanceCapacity: no local\.\w+ capacity/);
    expect(podStatusWord(waiting)).toMatch(/^Launching \(InsufficientInstanceCapacity, retry in [1-5]s\)$/);
    const text = describePod(waiting, undefined, []);
    expect(text).toMatch(/^Stage: {10}Launching since /m);
    expect(text).toMatch(/^Attempts: {7}\d+ failed$/m);
    expect(text).toMatch(/^Last Error: {5}InsufficientInstanceCapacity while Launching, .* ago; retry in \ds: /m);
    expect(text).toMatch(/^Timeline:\n {2}Stage\s+Entered\s+Age\s+Message\n {2}Selecting\s+\S+\s+\S+\s+accepted/m);
    // What the virtual node writes into the Kubernetes pod.
    expect(progressCondition(waiting.progress)).toMatchObject({ type: 'cello.dev/CellProgress', status: 'False', reason: 'Launching' });
    expect(progressCondition(waiting.progress)!.message).toMatch(/last error InsufficientInstanceCapacity: .*\(retry at /);
    const events = await new Events(store).list({ namespace: 'default', name: 'web' });
    expect(events.some((e) => e.reason === 'FailedLaunch' && e.type === 'Warning' && /InsufficientInstanceCapacity/.test(e.message))).toBe(true);

    provider.noCapacity = 0;
    const up = await waitPod('web', 'running', running);
    await waitPod('web', 'at stage Running', (p) => p.progress?.stage === 'Running');
    const done = (await api.getPod({ namespace: 'default', name: 'web' })).progress!;
    expect(done.history.map((h) => h.stage)).toEqual(['Selecting', 'Launching', 'Booting', 'Pulling', 'Running']);
    expect(done.lastError).toBeUndefined();
    expect(podStatusWord(up)).toBe('Running');
  }, 40_000);

  it('launch deadline: a launch that never answers fails the cell (LaunchTimeout); the pod retries after a back-off and runs', async () => {
    const { provider, waitPod, waitCell, api } = await setup();
    provider.hangLaunches = 1;
    await api.applyPod({ manifest: pod('slow'), namespace: '', dryRun: false });
    const launching = await waitPod('slow', 'launching with a deadline', (p) => p.progress?.stage === 'Launching' && !!p.progress.deadline);
    expect(launching.progress!.deadline!.getTime() - launching.progress!.since!.getTime()).toBeLessThanOrEqual(1100);
    const cell = await waitCell('timed out launching', (c) => c.reason === 'LaunchTimeout');
    expect(cell.message).toMatch(/no instance after 1s/);
    const retrying = await waitPod('slow', 'noting LaunchTimeout', (p) => p.progress?.lastError?.reason === 'LaunchTimeout');
    expect(retrying.progress!.lastError!.retryAt).toBeDefined();
    await waitPod('slow', 'running on a second cell', (p) => running(p) && p.cellId !== cell.id);
  }, 40_000);

  it('boot deadline: an agent that never answers fails the cell (BootTimeout); the pod is noted and moves to a new cell', async () => {
    const { faults, waitPod, waitCell, api } = await setup();
    faults.silenceNext = true;
    await api.applyPod({ manifest: pod('mute'), namespace: '', dryRun: false });
    await waitPod('mute', 'booting', (p) => p.progress?.stage === 'Booting' && !!p.progress.deadline);
    const cell = await waitCell('timed out booting', (c) => c.reason === 'BootTimeout');
    expect(cell.message).toMatch(/agent did not answer within 1s/);
    const p = await waitPod('mute', 'running on another cell', (x) => running(x) && x.cellId !== cell.id);
    expect(p.progress!.attempts).toBeGreaterThanOrEqual(1);
    expect(stages(p)).toEqual(expect.arrayContaining(['Launching', 'Booting', 'Selecting', 'Running']));
  }, 40_000);

  it('drain deadline: a pod that does not stop in its grace period plus the slack is cut off (DrainTimeout)', async () => {
    const { faults, waitPod, waitCell, api } = await setup();
    await api.applyPod({ manifest: pod('stuck'), namespace: '', dryRun: false });
    const p = await waitPod('stuck', 'running', running);
    faults.hangDelete = true;
    await api.deletePod({ pod: { namespace: 'default', name: 'stuck' }, wait: false, gracePeriodSeconds: 0 });
    await waitCell('draining', (c) => c.id === p.cellId && c.state === CellState.CELL_STATE_DRAINING);
    const cell = await waitCell('cut off', (c) => c.id === p.cellId && c.reason === 'DrainTimeout');
    expect([CellState.CELL_STATE_TERMINATING, CellState.CELL_STATE_TERMINATED]).toContain(cell.state);
  }, 40_000);

  it('terminate deadline: an instance the provider does not end in time leaves the cell Terminated (TerminateTimeout) for the GC', async () => {
    const { provider, waitPod, waitCell, api } = await setup();
    await api.applyPod({ manifest: pod('sticky'), namespace: '', dryRun: false });
    const p = await waitPod('sticky', 'running', running);
    provider.hangTerminate = true;
    await api.deletePod({ pod: { namespace: 'default', name: 'sticky' }, wait: false, gracePeriodSeconds: 0 });
    const cell = await waitCell('timed out terminating', (c) => c.id === p.cellId && c.reason === 'TerminateTimeout');
    expect(cell.state).toBe(CellState.CELL_STATE_TERMINATED);
    expect(cell.message).toMatch(/not terminated within 1s; garbage collection retries it/);
  }, 40_000);
});
