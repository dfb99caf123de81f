// A cell's reconcile: the state machine of cells/state.ts driven forward — Creating (launch,
// with capacity fallback to the next candidate type), Booting (address, bootstrap, the agent's
// first answer), Ready/Bound (health through its status stream, release when its pod is gone or
// finished), Draining (the pod stopped with its grace), Terminating, Terminated (kept briefly,
// then removed) — each state with its deadline, and the failures that end a cell.
import { ConfigureRegistriesRequest, DeletePodRequest, GetInfoRequest, type AgentInfo } from '@cello/proto/cell';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { Cell, PodObject } from '@cello/proto/controller';
import { cellKey, cellOf, podOf, refKey, splitKey, type CellRecord, type PodRecord } from '../cells/schema.js';
import { CellState, stateName, timeoutReason } from '../cells/state.js';
import { CapacityError, type CellBootstrapData } from '../providers/provider.js';
import { errMsg } from '../util/errors.js';
import { callUnary } from '../agents/pool.js';
import type { CellBootstrap } from './cell-bootstrap.js';
import { TAG_CELL, TAG_CONTROLLER, TAG_POD, type ReconcileContext } from './context.js';
import { detachPod, markUnschedulable } from './pod-status.js';
import { enterStage, launchErrorReason, noteFailure } from '../cells/progress.js';
import { launchOptions } from './scheduler.js';
import type { StatusWatch } from './status-watch.js';
import { transition, transitionPath, type Step } from './transition.js';
import type { WarmPool } from './warm-pool.js';

export class CellLifecycle {
  /** Side effects in flight (launch, boot, drain, terminate), at most one per cell and kind. */
  private readonly inflight = new Map<string, Promise<unknown>>();

  constructor(
    private readonly ctx: ReconcileContext,
    private readonly watch: StatusWatch,
    private readonly bootstrap: CellBootstrap,
    private readonly warmPool: WarmPool,
  ) {}

  async reconcile(id: string): Promise<void> {
    const { ctx } = this;
    const cached = ctx.cache.cells.get(id);
    if (!cached) {
      this.watch.stop(id);
      this.ctx.o.serviceFeed?.stop(id);
      return;
    }
    const rec = cached.rec;
    const cell = cached.cell; // parsed once per revision by the cache; read-only here
    const overdue = cell.deadline !== undefined && cell.deadline.getTime() <= Date.now();
    switch (cell.state) {
      case CellState.CELL_STATE_CREATING:
        if (overdue) return void (await this.fail(id, cell, timeoutReason(cell.state), `no instance after ${ctx.t.createSeconds}s`));
        if (this.podGone(cell)) return void (await transition(ctx, id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', 'its pod is gone'));
        return this.once(`launch:${id}`, () => this.launch(id, rec, cell), cell.deadline);
      case CellState.CELL_STATE_BOOTING:
        if (overdue) return void (await this.fail(id, cell, timeoutReason(cell.state), `agent did not answer within ${ctx.t.bootSeconds}s`));
        if (this.podGone(cell)) return void (await transition(ctx, id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', 'its pod is gone'));
        return this.once(`boot:${id}`, () => this.boot(id, cell), cell.deadline);
      case CellState.CELL_STATE_READY:
      case CellState.CELL_STATE_BOUND: {
        if (this.watch.ensure(id, cell.address)) return this.lost(id, cell, `agent silent for more than ${ctx.t.healthSeconds}s`);
        ctx.o.serviceFeed?.start(id, cell.address);
        if (cell.state === CellState.CELL_STATE_BOUND) {
          if (this.podGone(cell)) {
            await transition(ctx, id, CellState.CELL_STATE_DRAINING, 'PodDeleted', 'its pod is gone');
            return;
          }
          const key = refKey(cell.pod!);
          const pod = ctx.cache.pods.get(key);
          if (rec.podFinishedAt && Date.now() - Date.parse(rec.podFinishedAt) >= (ctx.o.retainFinishedSeconds ?? 300) * 1000) {
            await transition(ctx, id, CellState.CELL_STATE_DRAINING, 'PodFinished', `pod ${key} finished; releasing its cell`);
            return;
          }
          if (pod && ctx.cache.podObject(pod).cellId === id) ctx.enqueue(`pod:${key}`);
        }
        return;
      }
      case CellState.CELL_STATE_DRAINING:
        if (overdue) return void (await transition(ctx, id, CellState.CELL_STATE_TERMINATING, timeoutReason(cell.state), 'pod did not stop in time'));
        return this.once(`drain:${id}`, () => this.drain(id, rec, cell), cell.deadline);
      case CellState.CELL_STATE_TERMINATING:
        if (overdue) {
          // The provider did not end the instance in time: the record says so and ends here; the
          // garbage collector, which terminates every owned instance without a live cell, keeps trying.
          return void (await transition(
            ctx,
            id,
            CellState.CELL_STATE_TERMINATED,
            timeoutReason(cell.state),
            `instance ${cell.instanceId || '(none)'} not terminated within ${ctx.t.terminateSeconds}s; garbage collection retries it`,
          ));
        }
        return this.once(`terminate:${id}`, () => this.terminate(id, cell), cell.deadline);
      case CellState.CELL_STATE_TERMINATED: {
        this.watch.stop(id);
        this.ctx.o.serviceFeed?.stop(id);
        if (cell.pod?.name) ctx.enqueue(`pod:${refKey(cell.pod)}`);
        // Kept briefly so `cellctl get cells` shows how a cell ended.
        if (Date.now() - (cell.stateSince?.getTime() ?? 0) > 30_000) {
          await ctx.o.store.delete(cellKey(id));
          ctx.cache.cells.delete(id);
        }
        return;
      }
      default:
        return;
    }
  }

  /**
   * Runs a side effect at most once at a time per key. The reconcile waits for it only until
   * the state's deadline: a call that never returns (a launch, a provider's terminate) held the
   * cell's key, so its deadline was never acted on. The side effect itself goes on.
   */
  private async once(key: string, fn: () => Promise<void>, deadline?: Date): Promise<void> {
    if (this.inflight.has(key)) return;
    const p = fn().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    if (!deadline) return void (await p);
    let timer: NodeJS.Timeout | undefined;
    const due = new Promise<{ done: false }>((resolve) => (timer = setTimeout(() => resolve({ done: false }), Math.max(0, deadline.getTime() - Date.now()))));
    // Settles with the error instead of rejecting, so a failure after the deadline is not unhandled.
    const outcome = p.then(
      () => ({ done: true as const, err: undefined as unknown }),
      (err: unknown) => ({ done: true as const, err }),
    );
    const first = await Promise.race([outcome, due]);
    clearTimeout(timer);
    if (first.done) {
      if (first.err !== undefined) throw first.err instanceof Error ? first.err : new Error(String(first.err));
      return;
    }
    void outcome.then(({ err }) => err !== undefined && this.ctx.log.warn({ key, err: errMsg(err) }, 'cell side effect failed after its deadline'));
  }

  private podGone(cell: Cell): boolean {
    if (!cell.pod?.name) return false;
    const p = this.ctx.cache.pods.get(refKey(cell.pod));
    if (!p) return true;
    const po = this.ctx.cache.podObject(p);
    // The pod was rebound elsewhere (this cell was presumed lost) or is being deleted.
    return !!p.rec.deleting || (po.cellId !== '' && po.cellId !== cell.id);
  }

  private async launch(id: string, rec: CellRecord, cell: Cell): Promise<void> {
    const { ctx } = this;
    const { o } = ctx;
    if (cell.instanceId) {
      await transition(ctx, id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${cell.instanceId} launched`);
      return;
    }
    // A launch may have happened before a crash: look for the instance by its tag first.
    if (Date.parse(cell.createdAt?.toISOString() ?? '') < ctx.startedAt) {
      const owned = await o.provider.listOwned(o.controllerId);
      const found = owned.find((i) => i.tags[TAG_CELL] === id && i.state !== 'terminated');
      if (found) {
        await transition(ctx, id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${found.instanceId} found after restart`, (c) => {
          c.instanceId = found.instanceId;
          if (found.agentAddress) c.address = found.agentAddress;
        });
        return;
      }
    }
    const tries: Array<[string, boolean]> = [[cell.instanceType, cell.spot], ...(rec.fallback ?? [])];
    const errors: string[] = [];
    for (let i = 0; i < tries.length; i++) {
      const [type, spot] = tries[i]!;
      const issued = await this.bootstrap.issue(id, ctx.t.createSeconds + ctx.t.bootSeconds);
      const token = issued.token;
      const bootstrap: CellBootstrapData = {
        caCertPem: (await o.caCertPem?.()) ?? '',
        token,
        tokenExpiresAt: issued.expiresAt.toISOString(),
        controllerId: o.controllerId,
        cellId: id,
        agentPort: o.agentPort ?? 7443,
      };
      const tags: Record<string, string> = { [TAG_CONTROLLER]: o.controllerId, [TAG_CELL]: id };
      if (cell.pod?.name) tags[TAG_POD] = refKey(cell.pod);
      const podRec = cell.pod?.name ? ctx.cache.pods.get(refKey(cell.pod)) : undefined;
      const options = podRec ? launchOptions(ctx, ctx.cache.podObject(podRec).metadata?.annotations ?? {}) : {};
      try {
        const inst = await o.provider.launch({ cellId: id, instanceType: type, spot, tags, bootstrap, ...(Object.keys(options).length ? { options } : {}) });
        ctx.metrics.launches.inc({ instance_type: type, outcome: 'ok' });
        const t = ctx.types().find((x) => x.name === type);
        await transition(ctx, id, CellState.CELL_STATE_BOOTING, 'Booting', `instance ${inst.instanceId} (${type}${inst.spot ? ', spot' : ''}) launched`, (c, r) => {
          c.instanceId = inst.instanceId;
          c.instanceType = type;
          c.spot = inst.spot;
          c.zone = inst.zone ?? '';
          if (t) c.hourlyPrice = inst.spot ? (t.spotHourlyUsd ?? t.onDemandHourlyUsd) : t.onDemandHourlyUsd;
          r.fallback = tries.slice(i + 1);
          this.bootstrap.keep(r, id, token);
        });
        if (cell.pod?.name && type !== cell.instanceType) {
          await ctx.cache.writePod(refKey(cell.pod), (r) => {
            const p = podOf(r);
            if (p.cellId !== id) return undefined;
            p.instanceType = type;
            r.object = PodObject.toJSON(p);
            return r;
          });
        }
        return;
      } catch (err) {
        const capacity = err instanceof CapacityError;
        ctx.metrics.launches.inc({ instance_type: type, outcome: capacity ? 'capacity' : 'error' });
        errors.push(`${type}${spot ? ' (spot)' : ''}: ${errMsg(err)}`);
        ctx.log.warn({ cell: id, instanceType: type, err: errMsg(err) }, capacity ? 'no capacity; trying next candidate' : 'launch failed');
        const reason = launchErrorReason(err, capacity);
        const what = `${type}${spot ? ' (spot)' : ''}: ${errMsg(err)}`;
        await this.podNote(id, cell, (r) => noteFailure(r, reason, what, { stage: 'Launching' }));
        if (cell.pod?.name)
          void ctx.note({ kind: 'Pod', namespace: cell.pod.namespace || 'default', name: cell.pod.name, type: 'Warning', reason: 'FailedLaunch', message: `${reason}: ${what}` });
        if (!capacity) break;
      }
    }
    await this.fail(id, cell, 'LaunchFailed', errors.join('; '));
  }

  private async boot(id: string, cell: Cell): Promise<void> {
    const { ctx } = this;
    let address = cell.address;
    if (!address) {
      const [info] = await ctx.o.provider.describe([cell.instanceId]);
      if (!info) return void (await this.fail(id, cell, 'InstanceGone', `instance ${cell.instanceId} no longer exists`));
      if (info.state === 'terminated' || info.state === 'shutting-down' || info.state === 'stopped') {
        return void (await this.fail(id, cell, 'InstanceGone', `instance ${cell.instanceId} is ${info.state}`));
      }
      if (!info.agentAddress) return ctx.retryLater(`cell:${id}`, 1000);
      address = info.agentAddress;
    }
    // A new address is stored with the state change below when the cell comes up in this
    // reconcile (one store commit, not two); on every other way out it is stored first, so the
    // next attempt (and a drain) need not ask the provider again.
    const keepAddress = address !== cell.address ? (c: Cell) => void (c.address = address) : undefined;
    const saveAddress = async () => {
      if (keepAddress)
        await ctx.cache.writeCell(id, (r) => {
          if (!r) return undefined;
          const c = cellOf(r);
          keepAddress(c);
          r.cell = Cell.toJSON(c);
          return r;
        });
    };
    if (ctx.o.provider.needsBootstrap) {
      await this.podNote(id, cell, (r) => enterStage(r, 'Bootstrapping', { message: `agent at ${address}`, ...(cell.deadline ? { deadline: cell.deadline } : {}) }));
    }
    const bootstrapped = await this.bootstrap.run(id, cell, address);
    if (bootstrapped === 'retry') {
      await saveAddress();
      return ctx.retryLater(`cell:${id}`, 1000);
    }
    if (bootstrapped !== 'done') {
      await saveAddress();
      return void (await this.fail(id, cell, bootstrapped.failed, bootstrapped.message));
    }
    const client = ctx.o.agents.get(id, address);
    let info: AgentInfo;
    try {
      info = await callUnary<AgentInfo>(client, 'getInfo', GetInfoRequest.fromPartial({}), 2000);
    } catch {
      await saveAddress();
      return ctx.retryLater(`cell:${id}`, 200);
    }
    if (info.cellId && info.cellId !== id) {
      await saveAddress();
      return void (await this.fail(id, cell, 'WrongCell', `agent at ${address} says it is cell ${info.cellId}`));
    }
    if (ctx.o.cellRegistriesJson) {
      // Before Ready: a pod or a pre-pull on this cell must pull as the controller resolves.
      try {
        await callUnary(client, 'configureRegistries', ConfigureRegistriesRequest.fromPartial({ registriesJson: ctx.o.cellRegistriesJson }), 5000);
      } catch (err) {
        await saveAddress();
        const e = err as ServiceError;
        if (e.code === Status.INVALID_ARGUMENT || e.code === Status.UNIMPLEMENTED)
          return void (await this.fail(
            id,
            cell,
            'RegistriesRefused',
            `agent at ${address} refused the registries configuration${e.code === Status.UNIMPLEMENTED ? ' (an agent older than ConfigureRegistries: update the cell image)' : ''}: ${e.details}`,
          ));
        return ctx.retryLater(`cell:${id}`, 500);
      }
    }
    const ready: Step = { to: CellState.CELL_STATE_READY, reason: 'AgentReady', message: `agent ${info.version || ''} answered at ${address}`.replace('  ', ' ') };
    // A cell launched for its pod goes straight on to Bound, in the same write.
    const steps = cell.pod?.name ? [ready, { to: CellState.CELL_STATE_BOUND, reason: 'Bound', message: `bound to pod ${refKey(cell.pod)}` }] : [ready];
    const moved = await transitionPath(ctx, id, steps, keepAddress, [CellState.CELL_STATE_BOOTING]);
    if (!moved) return void (await saveAddress());
    if (cell.pod?.name) {
      ctx.enqueue(`pod:${refKey(cell.pod)}`);
    } else {
      // A warm cell: its likely images, before a pod asks (never holding up this reconcile).
      void ctx.prePull.run(ctx, id, address).catch((err: unknown) => ctx.log.warn({ cell: id, err: errMsg(err) }, 'pre-pull failed'));
    }
    this.watch.start(id, address);
    ctx.o.serviceFeed?.start(id, address);
  }

  private async drain(id: string, rec: CellRecord, cell: Cell): Promise<void> {
    const { ctx } = this;
    this.watch.stop(id);
    this.ctx.o.serviceFeed?.stop(id);
    if (cell.address && cell.pod?.name) {
      const grace = rec.graceSeconds ?? 30;
      try {
        await callUnary(ctx.o.agents.get(id, cell.address), 'deletePod', DeletePodRequest.fromPartial({ gracePeriodSeconds: grace }), (grace + ctx.t.drainSlackSeconds) * 1000);
      } catch (err) {
        ctx.log.warn({ cell: id, err: errMsg(err) }, 'agent DeletePod failed; terminating anyway');
      }
    }
    await transition(ctx, id, CellState.CELL_STATE_TERMINATING, 'Drained', cell.pod?.name ? `pod ${refKey(cell.pod)} stopped` : 'released', undefined, [
      CellState.CELL_STATE_DRAINING,
    ]);
  }

  private async terminate(id: string, cell: Cell): Promise<void> {
    const { ctx } = this;
    this.watch.stop(id);
    this.ctx.o.serviceFeed?.stop(id);
    ctx.o.agents.drop(id);
    ctx.o.renewer?.forget(id);
    await this.bootstrap.revoke(id);
    try {
      if (cell.instanceId) await ctx.o.provider.terminate([cell.instanceId]);
    } catch (err) {
      ctx.log.warn({ cell: id, err: errMsg(err) }, 'terminate failed; will retry');
      return ctx.retryLater(`cell:${id}`, 2000);
    }
    await transition(ctx, id, CellState.CELL_STATE_TERMINATED, cell.reason || 'Terminated', cell.message || 'instance terminated', undefined, [CellState.CELL_STATE_TERMINATING]);
  }

  /** A change to the progress of the pod this cell was made for (while it is still that pod's cell); `change` false: nothing to write. */
  private async podNote(id: string, cell: Cell, change: (r: PodRecord) => boolean | void): Promise<void> {
    if (!cell.pod?.name) return;
    await this.ctx.cache.writePod(refKey(cell.pod), (r) => {
      if (podOf(r).cellId !== id) return undefined;
      return change(r) === false ? undefined : r;
    });
  }

  private async fail(id: string, cell: Cell, reason: string, message: string): Promise<void> {
    const { ctx } = this;
    if (!cell.pod?.name) this.warmPool.failed(cell.instanceType);
    ctx.log.warn({ cell: id, state: stateName(cell.state), reason, message }, 'cell failed');
    if (cell.pod?.name) {
      const key = refKey(cell.pod);
      const [ns, name] = splitKey(key);
      await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'CellFailed', message: `cell ${id}: ${reason}: ${message}` }).catch(() => undefined);
      if (reason === 'LaunchFailed') await markUnschedulable(ctx, key, reason, message, false).catch(() => undefined);
    }
    await transition(ctx, id, CellState.CELL_STATE_TERMINATING, reason, message);
    if (cell.pod?.name) await detachPod(ctx, cell, reason, message, cell.state === CellState.CELL_STATE_BOUND);
  }

  private async lost(id: string, cell: Cell, message: string): Promise<void> {
    const { ctx } = this;
    ctx.metrics.cellsLost.inc();
    this.watch.stop(id);
    this.ctx.o.serviceFeed?.stop(id);
    ctx.o.agents.drop(id);
    await transition(ctx, id, CellState.CELL_STATE_TERMINATING, 'CellLost', message);
    if (cell.pod?.name) {
      const [ns, name] = splitKey(refKey(cell.pod));
      await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'CellLost', message: `cell ${id}: ${message}` });
      await detachPod(ctx, cell, 'CellLost', message, cell.state === CellState.CELL_STATE_BOUND);
    }
  }
}
