// The controller core's pod status (Kubernetes-shaped protobuf) as a Kubernetes v1 PodStatus.
import { ConditionStatus, ContainerRestartPolicy, PodPhase, type ContainerState, type ContainerStatus, type PodStatus } from '@cello/proto/cell';
import type { PodProgress } from '@cello/proto/controller';

const PHASE: Record<number, string> = {
  [PodPhase.POD_PHASE_PENDING]: 'Pending',
  [PodPhase.POD_PHASE_RUNNING]: 'Running',
  [PodPhase.POD_PHASE_SUCCEEDED]: 'Succeeded',
  [PodPhase.POD_PHASE_FAILED]: 'Failed',
  [PodPhase.POD_PHASE_UNKNOWN]: 'Unknown',
};

const COND: Record<number, string> = {
  [ConditionStatus.CONDITION_STATUS_TRUE]: 'True',
  [ConditionStatus.CONDITION_STATUS_FALSE]: 'False',
};

const iso = (d?: Date) => (d ? new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined);

function state(s?: ContainerState): Record<string, unknown> {
  const st = s?.state;
  if (!st) return {};
  if (st.$case === 'waiting') return { waiting: { reason: st.value.reason || undefined, message: st.value.message || undefined } };
  if (st.$case === 'running') return { running: { startedAt: iso(st.value.startedAt) } };
  const t = st.value;
  return {
    terminated: {
      exitCode: t.exitCode,
      ...(t.signal ? { signal: t.signal } : {}),
      reason: t.reason || undefined,
      message: t.message || undefined,
      startedAt: iso(t.startedAt),
      finishedAt: iso(t.finishedAt),
      containerID: t.containerId || undefined,
    },
  };
}

function container(c: ContainerStatus, image: string | undefined): Record<string, unknown> {
  return {
    name: c.name,
    state: state(c.state),
    lastState: state(c.lastState),
    ready: c.ready,
    restartCount: c.restartCount,
    image: c.image || image || '',
    imageID: c.imageId || '',
    ...(c.containerId ? { containerID: c.containerId.includes('://') ? c.containerId : `cello://${c.containerId}` } : {}),
    ...(c.started !== undefined ? { started: c.started } : {}),
  };
}

export interface KubePodLike {
  spec?: {
    containers?: { name: string; image?: string }[];
    initContainers?: { name: string; image?: string; restartPolicy?: string | ContainerRestartPolicy }[];
    ephemeralContainers?: { name: string; image?: string }[];
  };
}

/**
 * A v1 PodStatus. hostIP is the address of the pod's cell (its host), left out until the cell
 * reports it, as a kubelet leaves it empty until the pod starts: hostIPs merge by ip under a
 * strategic merge patch, so a placeholder written first would stay beside the real one.
 */
export function kubeStatus(s: PodStatus, pod: KubePodLike, hostIP: string): Record<string, unknown> {
  const images = new Map<string, string | undefined>();
  for (const c of [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? []), ...(pod.spec?.ephemeralContainers ?? [])]) images.set(c.name, c.image);
  // The API server allows one IP per family, the primary first.
  const podIPs: string[] = [];
  for (const ip of [s.podIp, ...s.podIps].filter(Boolean)) {
    if (!podIPs.some((x) => x.includes(':') === ip.includes(':'))) podIPs.push(ip);
  }
  return {
    phase: PHASE[s.phase] ?? 'Pending',
    // PodScheduled belongs to the scheduler (the pod is bound to this node); the core's
    // PodScheduled means "has a cell", which Initialized and Ready already tell.
    conditions: s.conditions
      .filter((c) => c.type !== 'PodScheduled')
      .map((c) => ({
        type: c.type,
        status: COND[c.status] ?? 'Unknown',
        // Strategic merge keeps fields a patch leaves out: null clears a stale reason or message.
        reason: c.reason || null,
        message: c.message || null,
        lastTransitionTime: iso(c.lastTransitionTime) ?? null,
        lastProbeTime: null,
      })),
    message: s.message || null,
    reason: s.reason || null,
    ...(hostIP ? { hostIP, hostIPs: [{ ip: hostIP }] } : {}),
    ...(s.podIp ? { podIP: s.podIp } : {}),
    ...(podIPs.length ? { podIPs: podIPs.map((ip) => ({ ip })) } : {}),
    ...(s.startTime ? { startTime: iso(s.startTime) } : {}),
    ...(s.qosClass ? { qosClass: s.qosClass } : {}),
    containerStatuses: s.containerStatuses.map((c) => container(c, images.get(c.name))),
    ...(s.initContainerStatuses.length
      ? {
          initContainerStatuses: s.initContainerStatuses.map((c) => {
            const k = container(c, images.get(c.name));
            // As the kubelet: an init container (not a sidecar) that ran to completion is ready.
            // (A Kubernetes pod says 'Always'; the core's PodSpec, printed by cellctl, the enum.)
            const policy = pod.spec?.initContainers?.find((i) => i.name === c.name)?.restartPolicy;
            const sidecar = policy === 'Always' || policy === ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS;
            const done = c.state?.state?.$case === 'terminated' && c.state.state.value.exitCode === 0;
            return sidecar ? k : { ...k, ready: c.ready || done };
          }),
        }
      : {}),
    // kubectl debug waits on these (never ready: the kubelet reports them so).
    ...(s.ephemeralContainerStatuses.length
      ? { ephemeralContainerStatuses: s.ephemeralContainerStatuses.map((c) => ({ ...container(c, images.get(c.name)), ready: false })) }
      : {}),
  };
}

interface KContainerStatus {
  name: string;
  ready?: boolean;
  started?: boolean;
  state?: { terminated?: { exitCode: number } } & Record<string, unknown>;
  [k: string]: unknown;
}

/**
 * What the kubelet writes when a deleted pod's containers are gone, before the object goes: a
 * terminal phase (Succeeded when every container ended with 0, else Failed), and a container
 * without a terminated state reported as ContainerStatusUnknown (137), its words. Finalizers wait
 * for this phase: a Job's pod (batch.kubernetes.io/job-tracking) stays until its Job controller
 * sees the pod failed or succeeded, and its pod failure policy reads the phase and conditions.
 */
export function terminalStatus(status: { containerStatuses?: unknown; [k: string]: unknown } | undefined, now = new Date()): Record<string, unknown> {
  const containers = ((status?.containerStatuses as KContainerStatus[] | undefined) ?? []).map((c) =>
    c.state?.terminated
      ? { ...c, ready: false, started: false }
      : {
          ...c,
          ready: false,
          started: false,
          ...(c.state ? { lastState: c.state } : {}),
          state: { terminated: { exitCode: 137, reason: 'ContainerStatusUnknown', message: 'The container could not be located when the pod was terminated' } },
        },
  );
  const succeeded = containers.length > 0 && containers.every((c) => c.state?.terminated?.exitCode === 0);
  const at = iso(now);
  return {
    phase: succeeded ? 'Succeeded' : 'Failed',
    containerStatuses: containers,
    conditions: ['Ready', 'ContainersReady'].map((type) => ({ type, status: 'False', reason: 'PodCompleted', lastTransitionTime: at, lastProbeTime: null })),
  };
}

/** The pod condition that says where a Cello pod is on its way to running (cellctl's Stage). */
export const PROGRESS_CONDITION = 'cello.dev/CellProgress';

/**
 * The pod's progress as a condition: True once it runs; else False with the stage as reason and
 * its deadline, attempts and last error in the message (absolute times, so an unchanged
 * progress is an unchanged status and no patch).
 */
export function progressCondition(g: PodProgress | undefined): Record<string, unknown> | undefined {
  if (!g?.stage) return undefined;
  const parts: string[] = [g.stage === 'Running' ? 'running' : `${g.stage.toLowerCase()}${g.since ? ` since ${iso(g.since)}` : ''}`];
  if (g.stage !== 'Running' && g.deadline) parts.push(`deadline ${iso(g.deadline)}`);
  if (g.attempts) parts.push(`${g.attempts} failed attempt${g.attempts === 1 ? '' : 's'}`);
  const e = g.lastError;
  if (e && g.stage !== 'Running') parts.push(`last error ${e.reason}: ${e.message}${e.retryAt ? ` (retry at ${iso(e.retryAt)})` : ''}`);
  return {
    type: PROGRESS_CONDITION,
    status: g.stage === 'Running' ? 'True' : 'False',
    reason: g.stage,
    message: parts.join('; '),
    lastTransitionTime: iso(g.since) ?? null,
    lastProbeTime: null,
  };
}

export interface GatedPod {
  spec?: { readinessGates?: unknown; [k: string]: unknown };
  status?: { conditions?: { type: string; status: string; lastTransitionTime?: string | null }[] };
}

/**
 * The kubelet's Ready rule with readiness gates (status.GeneratePodReadyCondition): a pod whose
 * containers are ready is Ready only when every gate's condition, which others write on the
 * pod, is True; otherwise Ready is False with reason ReadinessGatesNotReady. The gate
 * conditions themselves are never written here: the status patch merges by type and leaves them.
 */
export function applyReadinessGates(conditions: Record<string, unknown>[], pod: GatedPod, now = new Date()): void {
  const gates = Array.isArray(pod.spec?.readinessGates) ? (pod.spec.readinessGates as { conditionType?: string }[]) : [];
  const ready = conditions.find((c) => c.type === 'Ready');
  if (gates.length === 0 || !ready || ready.status !== 'True') return;
  const present = pod.status?.conditions ?? [];
  const unready: string[] = [];
  for (const g of gates) {
    const c = present.find((x) => x.type === g.conditionType);
    if (!c) unready.push(`corresponding condition of pod readiness gate "${g.conditionType}" does not exist.`);
    else if (c.status !== 'True') unready.push(`the status of pod readiness gate "${g.conditionType}" is not "True", but ${c.status}`);
  }
  const was = present.find((x) => x.type === 'Ready');
  if (unready.length > 0) {
    ready.status = 'False';
    ready.reason = 'ReadinessGatesNotReady';
    ready.message = unready.join(', ');
  }
  // Gates move Ready at times the core does not know: the time the pod already shows while the
  // verdict holds (so an unchanged verdict is an unchanged status, and no patch), else now.
  ready.lastTransitionTime = was && was.status === ready.status && was.lastTransitionTime ? was.lastTransitionTime : iso(now);
}
