// What the controller writes into a pod's status itself: why it has no cell (Unschedulable),
// what happens when its cell is lost (rescheduled or failed, the kubelet's node-failure rule),
// and the status its agent reports, merged with the controller's own conditions and the
// restarts counted on earlier cells.
import { ConditionStatus, ContainerState, PodPhase, PodStatus, RestartPolicy, type GetStatusResponse } from '@cello/proto/cell';
import { PodObject, type Cell } from '@cello/proto/controller';
import { podOf, refKey, splitKey } from '../cells/schema.js';
import { setCondition } from '../cells/conditions.js';
import { enterStage, noteFailure, sameFailure, stageOfAgentStatus } from '../cells/progress.js';
import type { ReconcileContext } from './context.js';

export const TERMINAL = new Set([PodPhase.POD_PHASE_SUCCEEDED, PodPhase.POD_PHASE_FAILED]);

/** Cell failures after which the pod waits before its next cell (pod.progress.lastError.retryAt). */
const LAUNCH_FAILURES = new Set(['LaunchFailed', 'LaunchTimeout']);
export const LAUNCH_RETRY_BASE_MS = 5000;
const LAUNCH_RETRY_MAX_MS = 60_000;

/** `noteProgress` false: the caller notes the failure in the pod's progress itself (a failed launch, see detachPod). */
export async function markUnschedulable(ctx: ReconcileContext, key: string, reason: string, message: string, noteProgress = true): Promise<void> {
  const cur = ctx.cache.pods.get(key)?.rec;
  if (cur?.unschedulable?.reason === reason && cur.unschedulable.message === message) return;
  await ctx.cache.writePod(key, (r) => {
    const p = podOf(r);
    const st = p.status ?? PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
    setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, 'Unschedulable', `${reason}: ${message}`);
    p.status = st;
    r.object = PodObject.toJSON(p);
    r.unschedulable = { reason, message };
    if (noteProgress && !sameFailure(r, reason, message)) noteFailure(r, reason, message, { stage: 'Selecting' });
    return r;
  });
  const [ns, name] = splitKey(key);
  await ctx.events.record({ kind: 'Pod', namespace: ns, name, type: 'Warning', reason: 'FailedScheduling', message: `${reason}: ${message}` });
}

/**
 * The pod's cell is gone. A pod that never ran is rescheduled. One that ran is handled as the
 * kubelet would a node failure: restartPolicy Never fails it; Always and OnFailure start it
 * again on a new cell (up to maxCellFailures times). An evicted pod (its instance announced
 * its end) always moves.
 */
export async function detachPod(ctx: ReconcileContext, cell: Cell, reason: string, message: string, ran: boolean, evicted = false): Promise<void> {
  const key = refKey(cell.pod!);
  const maxCellFailures = ctx.o.maxCellFailures ?? 5;
  let outcome = '';
  let retryInMs = 0;
  await ctx.cache.writePod(key, (r) => {
    outcome = ''; // fn may run more than once (a lost compare-and-swap is retried)
    const p = podOf(r);
    if (p.cellId !== cell.id || r.deleting) return undefined;
    const st = p.status ?? PodStatus.fromPartial({});
    if (TERMINAL.has(st.phase)) return undefined;
    const failures = (r.cellFailures ?? 0) + 1;
    r.cellFailures = failures;
    const policy = p.spec?.restartPolicy ?? RestartPolicy.RESTART_POLICY_ALWAYS;
    // A launch that failed is not tried again at once: the capacity or limit it hit rarely
    // clears in a second (5 s, doubling, at most a minute).
    retryInMs = LAUNCH_FAILURES.has(reason) ? Math.min(LAUNCH_RETRY_MAX_MS, LAUNCH_RETRY_BASE_MS * 2 ** (failures - 1)) : 0;
    const now = new Date();
    const retryAt = retryInMs ? new Date(now.getTime() + retryInMs) : undefined;
    const launchError = r.progress?.stage === 'Launching' ? r.progress.lastError : undefined;
    if (reason === 'LaunchFailed' && launchError?.stage === 'Launching' && retryAt) {
      // Each candidate's failure was noted as it happened (InsufficientInstanceCapacity, ...): that
      // reason stays, with when the next launch is.
      launchError.retryAt = retryAt.toISOString();
    } else if (sameFailure(r, reason, message) && r.progress?.lastError) {
      if (retryAt) r.progress.lastError.retryAt = retryAt.toISOString();
    } else noteFailure(r, reason, message, { now, ...(retryAt ? { retryAt } : {}), stage: retryAt ? 'Launching' : 'Selecting' });
    if ((ran && !evicted && policy === RestartPolicy.RESTART_POLICY_NEVER) || failures > maxCellFailures) {
      st.phase = PodPhase.POD_PHASE_FAILED;
      st.reason = reason;
      st.message = `${message}${failures > maxCellFailures ? ` (cell lost ${failures} times)` : ''}`;
      setCondition(st, 'Ready', ConditionStatus.CONDITION_STATUS_FALSE, reason, message);
      outcome = 'failed';
    } else {
      st.phase = PodPhase.POD_PHASE_PENDING;
      st.reason = '';
      st.message = `rescheduling after ${reason}`;
      r.restartBase = r.restartBase ?? {};
      r.lastStates = r.lastStates ?? {};
      for (const c of [...st.containerStatuses, ...st.initContainerStatuses]) {
        if (ran) c.restartCount += 1;
        r.restartBase[c.name] = c.restartCount;
        if (c.state) r.lastStates[c.name] = ContainerState.toJSON(c.state);
        c.ready = false;
        c.lastState = c.state;
        c.state = { state: { $case: 'waiting', value: { reason: 'ContainerCreating', message: `new cell after ${reason}` } } };
      }
      setCondition(st, 'Ready', ConditionStatus.CONDITION_STATUS_FALSE, reason, message);
      setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, reason, 'waiting for a new cell');
      p.cellId = '';
      p.nodeName = '';
      outcome = 'rescheduled';
    }
    p.status = st;
    r.object = PodObject.toJSON(p);
    return r;
  });
  if (outcome) {
    const [ns, name] = splitKey(key);
    await ctx.events.record({
      kind: 'Pod',
      namespace: ns,
      name,
      type: 'Warning',
      reason: outcome === 'failed' ? 'PodFailed' : 'Rescheduling',
      message:
        outcome === 'failed' ? `${reason}: pod failed (restartPolicy)` : `${reason}: starting the pod on a new cell${retryInMs ? ` in ${Math.round(retryInMs / 1000)}s` : ''}`,
    });
    if (retryInMs && outcome !== 'failed') ctx.enqueueAfter(`pod:${key}`, retryInMs);
    else ctx.enqueue(`pod:${key}`);
  }
}

/**
 * Writes the status the agent of cell `cellId` (at `address`) reported for the pod `key`;
 * returns whether the pod just started running, and when it was created (start latency).
 */
export async function applyAgentStatus(
  ctx: ReconcileContext,
  key: string,
  cellId: string,
  address: string,
  s: GetStatusResponse,
): Promise<{ becameRunning: boolean; created?: Date }> {
  let becameRunning = false;
  let created: Date | undefined;
  await ctx.cache.writePod(key, (r) => {
    const p = podOf(r);
    if (p.cellId !== cellId) return undefined;
    const prev = p.status;
    const st = PodStatus.fromPartial(s.status!);
    for (const c of [...st.containerStatuses, ...st.initContainerStatuses]) {
      c.restartCount += r.restartBase?.[c.name] ?? 0;
      const last = r.lastStates?.[c.name];
      if (!c.lastState?.state && last) c.lastState = ContainerState.fromJSON(last);
    }
    // Keep the controller's own conditions (PodScheduled) alongside the agent's.
    for (const pc of prev?.conditions ?? []) if (!st.conditions.some((x) => x.type === pc.type)) st.conditions.push(pc);
    setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_TRUE);
    if (!st.hostIp && address) st.hostIp = address.split(':')[0] ?? '';
    if (prev?.phase !== PodPhase.POD_PHASE_RUNNING && (st.phase === PodPhase.POD_PHASE_RUNNING || st.phase === PodPhase.POD_PHASE_SUCCEEDED)) {
      becameRunning = true;
      created = p.metadata?.creationTimestamp;
    }
    if (PodStatus.toJSON(st) && JSON.stringify(PodStatus.toJSON(st)) === JSON.stringify(prev ? PodStatus.toJSON(prev) : null)) return undefined;
    // The stage follows the status, in the same write.
    const told = stageOfAgentStatus(st);
    enterStage(r, told.stage);
    if (told.error && !sameFailure(r, told.error.reason, told.error.message)) noteFailure(r, told.error.reason, told.error.message);
    p.status = st;
    r.object = PodObject.toJSON(p);
    return r;
  });
  return { becameRunning, created };
}
