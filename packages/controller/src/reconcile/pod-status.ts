// What the controller writes into a pod's status itself: why it has no cell (Unschedulable),
// what happens when its cell is lost (rescheduled or failed, the kubelet's node-failure rule),
// and the status its agent reports, merged with the controller's own conditions and the
// restarts counted on earlier cells.
import { ConditionStatus, ContainerState, PodPhase, PodStatus, RestartPolicy, type GetStatusResponse } from '@cello/proto/cell';
import { PodObject, type Cell } from '@cello/proto/controller';
import { podOf, refKey, splitKey } from '../cells/schema.js';
import { setCondition } from '../cells/conditions.js';
import type { ReconcileContext } from './context.js';

export const TERMINAL = new Set([PodPhase.POD_PHASE_SUCCEEDED, PodPhase.POD_PHASE_FAILED]);

export async function markUnschedulable(ctx: ReconcileContext, key: string, reason: string, message: string): Promise<void> {
  const cur = ctx.cache.pods.get(key)?.rec;
  if (cur?.unschedulable?.reason === reason && cur.unschedulable.message === message) return;
  await ctx.cache.writePod(key, (r) => {
    const p = podOf(r);
    const st = p.status ?? PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
    setCondition(st, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, 'Unschedulable', `${reason}: ${message}`);
    p.status = st;
    r.object = PodObject.toJSON(p);
    r.unschedulable = { reason, message };
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
  await ctx.cache.writePod(key, (r) => {
    outcome = ''; // fn may run more than once (a lost compare-and-swap is retried)
    const p = podOf(r);
    if (p.cellId !== cell.id || r.deleting) return undefined;
    const st = p.status ?? PodStatus.fromPartial({});
    if (TERMINAL.has(st.phase)) return undefined;
    const failures = (r.cellFailures ?? 0) + 1;
    r.cellFailures = failures;
    const policy = p.spec?.restartPolicy ?? RestartPolicy.RESTART_POLICY_ALWAYS;
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
      message: outcome === 'failed' ? `${reason}: pod failed (restartPolicy)` : `${reason}: starting the pod on a new cell`,
    });
    ctx.enqueue(`pod:${key}`);
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
    p.status = st;
    r.object = PodObject.toJSON(p);
    return r;
  });
  return { becameRunning, created };
}
