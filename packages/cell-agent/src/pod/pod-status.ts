// Pod phase and conditions computed from unit statuses as the kubelet does (getPhase,
// generateContainersReadyCondition, ...).
import type { ContainerStatus, PodCondition, PodSpec } from '@cello/proto/cell';
import { ConditionStatus, PodPhase, RestartPolicy } from '@cello/proto/cell';

export function podPhase(spec: PodSpec, init: ContainerStatus[], main: ContainerStatus[]): PodPhase {
  const policy = spec.restartPolicy;
  let pendingInit = 0;
  for (const s of init) {
    const st = s.state?.state;
    if (st?.$case === 'terminated' && st.value.exitCode === 0) continue;
    if (st?.$case === 'terminated' && policy === RestartPolicy.RESTART_POLICY_NEVER) return PodPhase.POD_PHASE_FAILED;
    pendingInit++;
  }
  let running = 0;
  let waiting = 0;
  let stopped = 0;
  let succeeded = 0;
  for (const s of main) {
    const st = s.state?.state;
    if (st?.$case === 'running') running++;
    else if (st?.$case === 'terminated') {
      stopped++;
      if (st.value.exitCode === 0) succeeded++;
    } else if (s.lastState?.state?.$case === 'terminated') stopped++;
    else waiting++;
  }
  if (pendingInit > 0) return PodPhase.POD_PHASE_PENDING;
  if (waiting > 0) return PodPhase.POD_PHASE_PENDING;
  if (running > 0) return PodPhase.POD_PHASE_RUNNING;
  if (stopped > 0) {
    if (policy === RestartPolicy.RESTART_POLICY_ALWAYS || policy === RestartPolicy.RESTART_POLICY_UNSPECIFIED) return PodPhase.POD_PHASE_RUNNING;
    if (stopped === succeeded) return PodPhase.POD_PHASE_SUCCEEDED;
    if (policy === RestartPolicy.RESTART_POLICY_NEVER) return PodPhase.POD_PHASE_FAILED;
    return PodPhase.POD_PHASE_RUNNING;
  }
  return PodPhase.POD_PHASE_PENDING;
}

/** Keeps lastTransitionTime stable while a condition's status does not change. */
export class Conditions {
  private readonly last = new Map<string, PodCondition>();

  set(type: string, ok: boolean, reason = '', message = ''): PodCondition {
    const status = ok ? ConditionStatus.CONDITION_STATUS_TRUE : ConditionStatus.CONDITION_STATUS_FALSE;
    const prev = this.last.get(type);
    const c: PodCondition = {
      type,
      status,
      reason,
      message,
      lastTransitionTime: prev && prev.status === status ? prev.lastTransitionTime : new Date(),
      lastProbeTime: undefined,
    };
    this.last.set(type, c);
    return c;
  }
}

export function qosClass(spec: PodSpec): string {
  const cs = [...spec.containers, ...spec.initContainers];
  let any = false;
  let guaranteed = true;
  for (const c of cs) {
    const r = c.resources;
    const lim = r?.limits;
    const req = r?.requests;
    if (lim?.cpuMillis !== undefined || lim?.memoryBytes !== undefined || req?.cpuMillis !== undefined || req?.memoryBytes !== undefined) any = true;
    if (lim?.cpuMillis === undefined || lim?.memoryBytes === undefined) guaranteed = false;
    if (req?.cpuMillis !== undefined && req.cpuMillis !== lim?.cpuMillis) guaranteed = false;
    if (req?.memoryBytes !== undefined && req.memoryBytes !== lim?.memoryBytes) guaranteed = false;
  }
  if (!any) return 'BestEffort';
  return guaranteed ? 'Guaranteed' : 'Burstable';
}
