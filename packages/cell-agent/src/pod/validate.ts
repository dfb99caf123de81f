// Refuses an invalid pod before anything is touched, naming the field the way Kubernetes' API
// validation does ("spec.containers[1].image: must not be empty").
import { CelloError, LINUX_STOP_SIGNALS } from '@cello/proto';
import { isIP } from 'node:net';
import { ContainerRestartPolicy, Protocol, type ApplyPodRequest, type Container, type Probe } from '@cello/proto/cell';

export class InvalidPodError extends CelloError {
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super('InvalidArgument', `${field}: ${reason}`);
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

function fail(field: string, reason: string): never {
  throw new InvalidPodError(field, reason);
}

function checkProbe(p: Probe | undefined, field: string, c: Container): void {
  if (!p) return;
  const a = p.handler?.action;
  if (!a) fail(`${field}.handler`, 'must specify exactly one of exec, httpGet, tcpSocket, grpc');
  if (a.$case === 'exec' && a.value.command.length === 0) fail(`${field}.exec.command`, 'must not be empty');
  const port = a.$case === 'httpGet' || a.$case === 'tcpSocket' ? a.value.port?.value : undefined;
  if (a.$case === 'httpGet' || a.$case === 'tcpSocket') {
    if (!port) fail(`${field}.${a.$case}.port`, 'is required');
    if (port.$case === 'number' && (port.value < 1 || port.value > 65535)) fail(`${field}.${a.$case}.port`, `${port.value} must be between 1 and 65535`);
    if (port.$case === 'name' && !c.ports.some((x) => x.name === port.value)) fail(`${field}.${a.$case}.port`, `names port "${port.value}" that the container does not declare`);
  }
  for (const [k, v] of [
    ['periodSeconds', p.periodSeconds],
    ['timeoutSeconds', p.timeoutSeconds],
    ['successThreshold', p.successThreshold],
    ['failureThreshold', p.failureThreshold],
  ] as const) {
    if (v !== undefined && v < 1) fail(`${field}.${k}`, 'must be at least 1');
  }
  if (p.initialDelaySeconds < 0) fail(`${field}.initialDelaySeconds`, 'must not be negative');
}

export function validateApply(req: ApplyPodRequest): void {
  const pod = req.pod;
  if (!pod) fail('pod', 'is required');
  if (!pod.metadata?.name) fail('pod.metadata.name', 'is required');
  const spec = pod.spec;
  if (!spec) fail('pod.spec', 'is required');
  if (spec.containers.length === 0) fail('spec.containers', 'must have at least one container');
  if (spec.osName && spec.osName !== 'linux') fail('spec.os.name', `"${spec.osName}" is not supported: a cell runs Linux containers only`);
  if (spec.terminationGracePeriodSeconds !== undefined && spec.terminationGracePeriodSeconds < 0) {
    fail('spec.terminationGracePeriodSeconds', 'must not be negative');
  }
  // A cell's pod is in the cell's network namespace anyway (hostNetwork is that), but it never
  // shares the PID or IPC namespace the agent runs in.
  if (spec.hostPid) fail('spec.hostPID', "is not supported on a cell: the pod would share the cell agent's PID namespace");
  if (spec.hostIpc) fail('spec.hostIPC', "is not supported on a cell: the pod would share the cell agent's IPC namespace");
  const groupsPolicy = spec.securityContext?.supplementalGroupsPolicy ?? '';
  if (!['', 'Merge', 'Strict'].includes(groupsPolicy)) fail('spec.securityContext.supplementalGroupsPolicy', `"${groupsPolicy}": must be Merge or Strict`);
  const hostPorts = new Map<string, { field: string; hostIp: string }[]>();
  const volumes = new Set<string>();
  for (const [i, v] of spec.volumes.entries()) {
    const f = `spec.volumes[${i}]`;
    if (!DNS_LABEL.test(v.name)) fail(`${f}.name`, `"${v.name}" must be a DNS label`);
    if (volumes.has(v.name)) fail(`${f}.name`, `duplicate volume "${v.name}"`);
    if (!v.source) fail(f, 'must specify a volume source');
    volumes.add(v.name);
  }
  const names = new Set<string>();
  const all: [string, Container[]][] = [
    ['spec.initContainers', spec.initContainers],
    ['spec.containers', spec.containers],
    ['spec.ephemeralContainers', spec.ephemeralContainers],
  ];
  for (const [list, cs] of all) {
    for (const [i, c] of cs.entries()) {
      const f = `${list}[${i}]`;
      if (!DNS_LABEL.test(c.name) || c.name.length > 63) fail(`${f}.name`, `"${c.name}" must be a DNS label (lowercase letters, digits, '-')`);
      if (names.has(c.name)) fail(`${f}.name`, `duplicate container name "${c.name}"`);
      names.add(c.name);
      if (!c.image.trim()) fail(`${f}.image`, 'must not be empty');
      if (list === 'spec.ephemeralContainers') {
        // A debugging container: nothing serves through it, nothing sizes or probes it.
        if (c.ports.length) fail(`${f}.ports`, 'may not be set for ephemeral containers');
        for (const k of ['livenessProbe', 'readinessProbe', 'startupProbe', 'lifecycle', 'resources'] as const)
          if (c[k]) fail(`${f}.${k}`, 'may not be set for ephemeral containers');
        const t = c.targetContainerName;
        if (t && ![...spec.initContainers, ...spec.containers].some((x) => x.name === t)) fail(`${f}.targetContainerName`, `"${t}" names no container of the pod`);
      } else if (c.targetContainerName) fail(`${f}.targetContainerName`, 'may only be set for ephemeral containers');
      for (const [j, e] of c.env.entries()) if (!ENV_NAME.test(e.name)) fail(`${f}.env[${j}].name`, `"${e.name}" is not a valid environment variable name`);
      const paths = new Set<string>();
      for (const [j, m] of c.volumeMounts.entries()) {
        const mf = `${f}.volumeMounts[${j}]`;
        if (!volumes.has(m.name)) fail(`${mf}.name`, `volume "${m.name}" not found in spec.volumes`);
        if (!m.mountPath.startsWith('/')) fail(`${mf}.mountPath`, `"${m.mountPath}" must be an absolute path`);
        if (m.mountPath.split('/').includes('..')) fail(`${mf}.mountPath`, "must not contain '..'");
        if (paths.has(m.mountPath)) fail(`${mf}.mountPath`, `"${m.mountPath}" is mounted twice`);
        paths.add(m.mountPath);
        if (m.subPath.startsWith('/')) fail(`${mf}.subPath`, 'must be a relative path');
        if (m.subPath.split('/').includes('..')) fail(`${mf}.subPath`, "must not contain '..'");
      }
      for (const [j, p] of c.ports.entries()) {
        if (p.containerPort < 1 || p.containerPort > 65535) fail(`${f}.ports[${j}].containerPort`, `${p.containerPort} must be between 1 and 65535`);
        if (p.hostPort === 0) continue;
        const hf = `${f}.ports[${j}].hostPort`;
        if (p.hostPort < 1 || p.hostPort > 65535) fail(hf, `${p.hostPort} must be between 1 and 65535`);
        if (spec.hostNetwork && p.hostPort !== p.containerPort) fail(hf, `${p.hostPort} must match containerPort ${p.containerPort} when hostNetwork is true`);
        if (p.hostIp && isIP(p.hostIp) !== 4) fail(`${f}.ports[${j}].hostIP`, `"${p.hostIp}" is not an IPv4 address`);
        const key = `${protocolName(p.protocol)}/${p.hostPort}`;
        const taken = (hostPorts.get(key) ?? []).find((o) => !o.hostIp || !p.hostIp || o.hostIp === p.hostIp);
        if (taken) fail(hf, `${key} is already claimed by ${taken.field}`);
        hostPorts.set(key, [...(hostPorts.get(key) ?? []), { field: hf, hostIp: p.hostIp }]);
      }
      const r = c.resources;
      if (r?.limits?.memoryBytes !== undefined && r.limits.memoryBytes <= 0) fail(`${f}.resources.limits.memory`, 'must be positive');
      if (r?.limits?.cpuMillis !== undefined && r.limits.cpuMillis <= 0) fail(`${f}.resources.limits.cpu`, 'must be positive');
      const sidecar = c.restartPolicy === ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS;
      if (sidecar && list !== 'spec.initContainers') fail(`${f}.restartPolicy`, 'may not be set for non-init containers');
      if (list === 'spec.initContainers' && !sidecar) {
        if (c.livenessProbe) fail(`${f}.livenessProbe`, 'must not be set for init containers without restartPolicy Always');
        if (c.readinessProbe) fail(`${f}.readinessProbe`, 'must not be set for init containers without restartPolicy Always');
        if (c.startupProbe) fail(`${f}.startupProbe`, 'must not be set for init containers without restartPolicy Always');
        if (c.lifecycle) fail(`${f}.lifecycle`, 'must not be set for init containers without restartPolicy Always');
      }
      const lc = c.lifecycle;
      if (lc?.stopSignal) {
        if (spec.osName !== 'linux') fail(`${f}.lifecycle.stopSignal`, 'may not be set for containers with empty `spec.os.name`');
        if (!LINUX_STOP_SIGNALS.has(lc.stopSignal)) fail(`${f}.lifecycle.stopSignal`, `unsupported value "${lc.stopSignal}"`);
      }
      for (const hook of ['postStart', 'preStop'] as const) {
        const a = lc?.[hook]?.action;
        if (a?.$case === 'sleep' && a.value.seconds < 0) fail(`${f}.lifecycle.${hook}.sleep.seconds`, 'must be non-negative');
      }
      checkProbe(c.livenessProbe, `${f}.livenessProbe`, c);
      checkProbe(c.readinessProbe, `${f}.readinessProbe`, c);
      checkProbe(c.startupProbe, `${f}.startupProbe`, c);
      const sc = c.securityContext;
      if (sc?.seccompProfile?.type === 3 && !sc.seccompProfile.localhostProfile) {
        fail(`${f}.securityContext.seccompProfile.localhostProfile`, 'is required for type Localhost');
      }
      if (sc?.seccompProfile?.localhostProfile?.split('/').includes('..')) {
        fail(`${f}.securityContext.seccompProfile.localhostProfile`, "must not contain '..'");
      }
    }
  }
}

export function protocolName(p: Protocol): 'TCP' | 'UDP' | 'SCTP' {
  return p === Protocol.PROTOCOL_UDP ? 'UDP' : p === Protocol.PROTOCOL_SCTP ? 'SCTP' : 'TCP';
}
