// A pod's reconcile: finish its deletion (drain or end its cell, then drop the record), release
// the cell of a pod that ended, schedule a pod without a live cell, and apply a new generation
// of the pod to its agent.
import { status, type ServiceError } from '@grpc/grpc-js';
import { ApplyPodRequest, ConfigMapData, PodPhase, PodSpec, PodStatus, type ApplyPodResponse, type Pod } from '@cello/proto/cell';
import { PodObject, type Cell } from '@cello/proto/controller';
import { podKey, podOf, refOf, splitKey, type PodRecord } from '../cells/schema.js';
import type { PodRecordWithData } from '../cells/pod-secrets.js';
import { CellState } from '../cells/state.js';
import { errMsg } from '../util/errors.js';
import { callUnary } from '../agents/pool.js';
import { DEFAULT_KEEP_BYTES, DEFAULT_RETAIN_SECONDS, saveLogs, savedLogsKey } from '../logs/saved.js';
import { secretsUsedByPod } from '../registry/pull-credentials.js';
import { podPull } from './pull-auth.js';
import type { ReconcileContext } from './context.js';
import { TERMINAL } from './pod-status.js';
import { schedule } from './scheduler.js';
import { transition } from './transition.js';

export async function reconcilePod(ctx: ReconcileContext, key: string): Promise<void> {
  const { cache } = ctx;
  const cached = cache.pods.get(key);
  if (!cached) return;
  const rec = cached.rec;
  const pod = cache.podObject(cached);
  const ref = refOf(pod);
  const cellC = pod.cellId ? cache.cells.get(pod.cellId) : undefined;
  const cell = cellC?.cell;
  const cellLive = cell && cell.state !== CellState.CELL_STATE_TERMINATED && cell.pod?.name === ref.name && (cell.pod?.namespace || 'default') === ref.namespace;

  if (rec.deleting) {
    if (!cellLive || !cell) {
      await ctx.o.store.delete(podKey(ref.namespace, ref.name));
      cache.pods.delete(key);
      await ctx.events.forget(ref).catch(() => undefined);
      await ctx.o.store.delete(savedLogsKey(ref.namespace, ref.name)).catch(() => undefined);
      ctx.log.info({ pod: key }, 'pod deleted');
      return;
    }
    if (cell.state === CellState.CELL_STATE_BOUND || cell.state === CellState.CELL_STATE_READY) {
      await cache.writeCell(cell.id, (r) => (r ? { ...r, graceSeconds: rec.deleting?.graceSeconds ?? graceOf(pod) } : undefined));
      await transition(ctx, cell.id, CellState.CELL_STATE_DRAINING, 'PodDeleted', `stopping pod ${key}`);
    } else if (cell.state === CellState.CELL_STATE_CREATING || cell.state === CellState.CELL_STATE_BOOTING) {
      await transition(ctx, cell.id, CellState.CELL_STATE_TERMINATING, 'PodDeleted', `pod ${key} was deleted before its cell was ready`);
    }
    return;
  }

  const phase = pod.status?.phase ?? PodPhase.POD_PHASE_PENDING;
  if (TERMINAL.has(phase)) {
    if (cellLive && cell && !cellC!.rec.podFinishedAt) {
      await keepLogs(ctx, key, pod, cell);
      await cache.writeCell(cell.id, (r) => (r ? { ...r, podFinishedAt: new Date().toISOString() } : undefined));
      ctx.enqueue(`cell:${cell.id}`);
    }
    return;
  }

  if (!cellLive) {
    await schedule(ctx, key, pod);
    return;
  }
  if (cell!.state === CellState.CELL_STATE_BOUND && (cellC!.rec.appliedGeneration ?? 0) < (pod.metadata?.generation ?? 1)) {
    await applyToAgent(ctx, key, rec, pod, cell!);
  }
}

/** The pod ended: its containers' last logs are kept before its cell can go (logs/saved.ts). */
async function keepLogs(ctx: ReconcileContext, key: string, pod: PodObject, cell: Cell): Promise<void> {
  const o = { keepBytes: DEFAULT_KEEP_BYTES, retainSeconds: DEFAULT_RETAIN_SECONDS, ...(ctx.o.savedLogs ?? {}) };
  if (o.keepBytes <= 0 || !cell.address) return;
  const [ns, name] = splitKey(key);
  const containers = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].map((c) => c.name);
  try {
    const saved = await saveLogs(ctx.o.store, ctx.o.agents.get(cell.id, cell.address), { namespace: ns, name, uid: pod.metadata?.uid ?? '', cellId: cell.id, containers }, o);
    ctx.log.info({ pod: key, cell: cell.id, containers: Object.keys(saved.containers ?? {}).length, errors: saved.errors }, 'pod logs kept');
  } catch (err) {
    ctx.log.warn({ pod: key, cell: cell.id, err: errMsg(err) }, 'keeping the pod logs failed');
  }
}

function graceOf(p: PodObject): number {
  return p.spec?.terminationGracePeriodSeconds ?? 30;
}

/** ApplyPod of the pod's current generation (with its secrets and config maps) to its cell's agent. */
async function applyToAgent(ctx: ReconcileContext, key: string, rec: PodRecord, pod: PodObject, cell: Cell): Promise<void> {
  if (!cell.address) return;
  const generation = pod.metadata?.generation ?? 1;
  const client = ctx.o.agents.get(cell.id, cell.address);
  const agentPod: Pod = {
    metadata: {
      name: pod.metadata!.name,
      namespace: pod.metadata!.namespace,
      uid: pod.metadata!.uid,
      labels: pod.metadata!.labels,
      annotations: pod.metadata!.annotations,
      creationTimestamp: pod.metadata!.creationTimestamp,
    },
    spec: pod.spec,
  };
  const spec = pod.spec ?? PodSpec.fromPartial({});
  const { pull, secrets } = await podPull(ctx, key, rec, spec);
  if (pull.unusable.length > 0) {
    const [ns, name] = splitKey(key);
    const names = pull.unusable.map((u) => `${u.name}: ${u.why}`).join('; ');
    void ctx.note({
      kind: 'Pod',
      namespace: ns,
      name,
      type: 'Warning',
      reason: 'FailedToRetrieveImagePullSecret',
      message: `Unable to retrieve some image pull secrets (${names}); attempting to pull the image may not succeed.`,
    });
  }
  // Pull secrets reach the cell only as the credentials above, unless the pod also reads them.
  const used = secretsUsedByPod(spec);
  for (const n of spec.imagePullSecrets) if (!used.has(n)) delete secrets[n];
  const req = ApplyPodRequest.fromPartial({
    pod: agentPod,
    generation,
    secrets,
    configMaps: Object.fromEntries(Object.entries((rec as PodRecordWithData).configMaps ?? {}).map(([k, v]) => [k, ConfigMapData.fromJSON(v)])),
    registryCredentials: pull.credentials,
    clusterDns: ctx.o.clusterDNS?.(),
  });
  try {
    const res = await callUnary<ApplyPodResponse>(client, 'applyPod', req, 60_000);
    await ctx.cache.writeCell(cell.id, (r) => (r ? { ...r, appliedGeneration: Math.max(r.appliedGeneration ?? 0, res.generation || generation) } : undefined));
    const [ns, name] = splitKey(key);
    void ctx.note({ kind: 'Pod', namespace: ns, name, reason: 'Dispatched', message: `generation ${generation} applied on cell ${cell.id}` });
  } catch (err) {
    const e = err as ServiceError;
    ctx.log.warn({ pod: key, cell: cell.id, err: errMsg(err) }, 'ApplyPod failed');
    const [ns, name] = splitKey(key);
    // The agent refuses this spec; retrying will not help.
    if (e.code === status.INVALID_ARGUMENT || e.code === status.FAILED_PRECONDITION) {
      await ctx.cache.writePod(key, (r) => {
        const p = podOf(r);
        const st = p.status ?? PodStatus.fromPartial({});
        st.phase = PodPhase.POD_PHASE_FAILED;
        st.reason = 'ApplyRefused';
        st.message = e.details || e.message;
        p.status = st;
        r.object = PodObject.toJSON(p);
        return r;
      });
      await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'ApplyRefused', message: e.details || e.message });
    } else {
      await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'DispatchFailed', message: errMsg(err) }).catch(() => undefined);
      ctx.retryLater(`pod:${key}`, 1000);
    }
  }
}
