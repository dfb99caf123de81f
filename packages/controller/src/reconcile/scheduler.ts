// Placing a pod: the architectures its images run on (pod-architectures.ts), the instance types
// of those that fit it (selection/), the provider's veto, then a cell —
// one already made for this pod, a Ready one from the warm pool, or a new one — and the binding
// written into the pod.
import { ConditionStatus, PodPhase, PodStatus } from '@cello/proto/cell';
import { Cell, PodObject } from '@cello/proto/controller';
import { newCellId, podOf, refKey, refOf, splitKey } from '../cells/schema.js';
import { setCondition } from '../cells/conditions.js';
import { CellState, deadlineFor } from '../cells/state.js';
import { SelectionError, selectCandidates } from '../selection/selection.js';
import { ImagePlatformsUnknown } from '../selection/image-platforms.js';
import type { ReconcileContext } from './context.js';
import { podArchitectures } from './pod-architectures.js';
import { podImages } from '../selection/architectures.js';
import { markUnschedulable } from './pod-status.js';
import { enterStage, stageOfCell, type PodStage } from '../cells/progress.js';
import { transition } from './transition.js';

/** Finds a cell for a pod: a Ready one from the warm pool, else a new one. */
export async function schedule(ctx: ReconcileContext, key: string, pod: PodObject): Promise<void> {
  const { o, cache } = ctx;
  const ref = refOf(pod);
  const annotations = pod.metadata?.annotations ?? {};
  // A pod whose last cell failed to launch waits out its back-off (detachPod set when).
  const retryAt = cache.pods.get(key)?.rec.progress?.lastError?.retryAt;
  const wait = retryAt ? Date.parse(retryAt) - Date.now() : 0;
  if (wait > 0) {
    ctx.enqueueAfter(`pod:${key}`, wait);
    return;
  }
  // The provider's veto first: it is cheap, and a refused pod needs no registry read.
  const refused = o.provider.refusePod?.({ namespace: ref.namespace, annotations });
  if (refused) {
    await markUnschedulable(ctx, key, 'NotAllowed', refused);
    return;
  }
  let candidates;
  try {
    const architectures = await podArchitectures(ctx, key, pod);
    candidates = selectCandidates(ctx.types(), {
      architectures,
      spec: pod.spec!,
      annotations: pod.metadata?.annotations ?? {},
      overhead: o.overhead ?? { cpuMillis: 100, memoryBytes: 64 * 1024 * 1024 },
      defaultSpot: o.defaultSpot ?? 'never',
    });
  } catch (err) {
    if (err instanceof ImagePlatformsUnknown) {
      // Said on the pod, and asked again with the key's back-off: the registry may come back.
      await markUnschedulable(ctx, key, 'ImagePlatformsUnknown', err.message);
      ctx.retryLater(`pod:${key}`, 2000);
      return;
    }
    if (!(err instanceof SelectionError)) throw err;
    await markUnschedulable(ctx, key, err.reason, err.message);
    return;
  }
  // A warm cell was launched without this pod's launch-time settings (its role, its disk).
  const options = launchOptions(ctx, annotations);
  // A cell already created for this pod (crash between the two writes below) is adopted.
  for (const id of cache.cells.forPod(refKey(ref))) {
    const cell = cache.cells.get(id)!.cell;
    if (
      cell.pod &&
      refKey(cell.pod) === refKey(ref) &&
      cell.state !== CellState.CELL_STATE_TERMINATED &&
      cell.state !== CellState.CELL_STATE_TERMINATING &&
      cell.state !== CellState.CELL_STATE_DRAINING
    ) {
      await bindPod(ctx, key, id, cell.instanceType, 'adopted', stageOfCell(cell.state) ?? 'Launching', cell.deadline);
      return;
    }
  }
  // Warm pool: cheapest candidate type first.
  for (const cand of Object.keys(options).length ? [] : candidates) {
    for (const id of cache.cells.readyFree(cand.type.name)) {
      const cell = cache.cells.get(id)!.cell;
      if (cell.state !== CellState.CELL_STATE_READY || cell.pod?.name || cell.instanceType !== cand.type.name) continue;
      if (cand.spot !== cell.spot && (o.defaultSpot === 'required' || pod.metadata?.annotations['cello.io/spot'] === 'required')) continue;
      const claimed = await transition(
        ctx,
        id,
        CellState.CELL_STATE_BOUND,
        'Bound',
        `bound to pod ${refKey(ref)}`,
        (cl) => {
          cl.pod = ref;
        },
        [CellState.CELL_STATE_READY],
      );
      if (!claimed) continue; // someone else took it
      await bindPod(ctx, key, id, cell.instanceType, 'warm pool', 'Pulling');
      ctx.prePull.landed(ctx, key, cell, podImages(pod.spec!));
      return;
    }
  }
  // A new cell, launched for this pod.
  const first = candidates[0]!;
  const id = newCellId();
  const at = new Date();
  const cell = Cell.fromPartial({
    id,
    state: CellState.CELL_STATE_CREATING,
    provider: o.provider.name,
    instanceType: first.type.name,
    pod: ref,
    spot: first.spot,
    hourlyPrice: first.hourlyUsd,
    createdAt: at,
    stateSince: at,
    reason: 'Launching',
    message: `launching ${first.type.name}${first.spot ? ' (spot)' : ''} for pod ${refKey(ref)}`,
    deadline: deadlineFor(CellState.CELL_STATE_CREATING, at, ctx.t),
  });
  // The cell and the pod's binding are two keys written side by side, so they share one store
  // commit (in sequence, every new pod waited for two). Either may land alone if the controller
  // dies in between, as before: a pod bound to a cell that does not exist is scheduled again,
  // and a cell created for a pod that was not bound is adopted then (above). This reconcile
  // holds the pod's key until both writes are cached, so its next run sees both.
  await Promise.all([
    cache.writeCell(id, (cur) =>
      cur ? undefined : { cell: Cell.toJSON(cell), warm: false, fallback: candidates.slice(1).map((c) => [c.type.name, c.spot] as [string, boolean]) },
    ),
    bindPod(ctx, key, id, first.type.name, 'new cell', 'Launching', cell.deadline),
  ]);
  ctx.enqueue(`cell:${id}`);
}

/** The pod's annotations the provider applies at launch (LaunchRequest.options). */
export function launchOptions(ctx: ReconcileContext, annotations: Record<string, string>): Record<string, string> {
  const keys = ctx.o.provider.launchAnnotations ?? [];
  return Object.fromEntries(Object.entries(annotations).filter(([k]) => keys.includes(k)));
}

async function bindPod(ctx: ReconcileContext, key: string, cellId: string, instanceType: string, how: string, stage: PodStage, deadline?: Date): Promise<void> {
  const rec = await ctx.cache.writePod(key, (r) => {
    enterStage(r, stage, { message: `cell ${cellId} (${instanceType}, ${how})`, ...(deadline ? { deadline } : {}) });
    const p = podOf(r);
    p.cellId = cellId;
    p.instanceType = instanceType;
    p.nodeName = cellId;
    const st = p.status ?? PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
    setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_TRUE, '', '');
    p.status = st;
    r.object = PodObject.toJSON(p);
    delete r.unschedulable;
    return r;
  });
  if (!rec) return;
  const [ns, name] = splitKey(key);
  const spec = podOf(rec).spec;
  if (spec) ctx.prePull.recordPod(ctx.o.warmPool ?? [], instanceType, podImages(spec));
  void ctx.note({ kind: 'Pod', namespace: ns, name, reason: 'Scheduled', message: `assigned to cell ${cellId} (${instanceType}, ${how})` });
  ctx.enqueue(`pod:${key}`);
}
