// Pod phase and conditions computed from unit statuses as the kubelet does (getPhase,
// generateContainersReadyCondition, ...).
import type { ContainerStatus, PodCondition, PodSpec } from '@cello/proto/cell';
import { ConditionStatus, ContainerRestartPolicy, PodPhase, RestartPolicy } from '@cello/proto/cell';

/**
 * The kubelet's getPhase. Sidecars (init containers with restartPolicy Always) keep the pod
 * Pending until they have started, count as running while they run, and are ignored once
 * terminated, so a pod whose main containers completed completes though it had sidecars.
 * `initialized`: the pod got past its init containers once (a sidecar restarting later does
 * not make it Pending again).
 */
export function podPhase(spec: PodSpec, init: ContainerStatus[], main: ContainerStatus[], initialized = false): PodPhase {
  const policy = spec.restartPolicy;
  const sidecars = new Set(spec.initContainers.filter((c) => c.restartPolicy === ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS).map((c) => c.name));
  let pendingInit = 0;
  let pendingSidecars = 0;
  let failedInit = 0;
  let running = 0;
  let waiting = 0;
  let stopped = 0;
  let succeeded = 0;
  for (const s of init) {
    const st = s.state?.state;
    const lastFailed = s.lastState?.state?.$case === 'terminated';
    if (sidecars.has(s.name)) {
      if (st?.$case === 'running') {
        if (!s.started) pendingSidecars++;
        running++;
      } else if (st?.$case !== 'terminated' && !lastFailed) {
        pendingSidecars++;
        waiting++;
      }
      continue;
    }
    if (st?.$case === 'terminated') {
      if (st.value.exitCode !== 0) failedInit++;
    } else if (st?.$case === 'waiting' && s.lastState?.state?.$case === 'terminated') {
      if (s.lastState.state.value.exitCode !== 0) failedInit++;
    } else pendingInit++;
  }
  for (const s of main) {
    const st = s.state?.state;
    if (st?.$case === 'running') running++;
    else if (st?.$case === 'terminated') {
      stopped++;
      if (st.value.exitCode === 0) succeeded++;
    } else if (s.lastState?.state?.$case === 'terminated') stopped++;
    else waiting++;
  }
  if (failedInit > 0 && policy === RestartPolicy.RESTART_POLICY_NEVER) return PodPhase.POD_PHASE_FAILED;
  if (pendingInit > 0 || (pendingSidecars > 0 && !initialized) || waiting > 0) return PodPhase.POD_PHASE_PENDING;
  if (running > 0) return PodPhase.POD_PHASE_RUNNING;
  if (running === 0 && stopped > 0) {
    if (policy === RestartPolicy.RESTART_POLICY_ALWAYS || policy === RestartPolicy.RESTART_POLICY_UNSPECIFIED) return PodPhase.POD_PHASE_RUNNING;
    if (stopped === succeeded) return PodPhase.POD_PHASE_SUCCEEDED;
    if (policy === RestartPolicy.RESTART_POLICY_NEVER) return PodPhase.POD_PHASE_FAILED;
    return PodPhase.POD_PHASE_RUNNING;
  }
  return PodPhase.POD_PHASE_PENDING;
}

/**
 * The kubelet's default waiting reason: a container it has not created yet waits with
 * `ContainerCreating`, or `PodInitializing` when the pod has init containers (for the init
 * containers after the running one as for the app containers behind them; kubelet
 * convertToAPIContainerStatuses). A unit that ran before keeps its own reason.
 */
export function withDefaultWaitingReason(statuses: ContainerStatus[], podHasInitContainers: boolean): ContainerStatus[] {
  if (!podHasInitContainers) return statuses;
  return statuses.map((s) => {
    const st = s.state?.state;
    if (st?.$case !== 'waiting' || st.value.reason !== 'ContainerCreating' || s.restartCount > 0 || s.lastState?.state) return s;
    return { ...s, state: { state: { $case: 'waiting', value: { reason: 'PodInitializing', message: st.value.message } } } };
  });
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
