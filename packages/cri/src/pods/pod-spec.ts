// CRI configurations -> the Kubernetes v1 Pod the controller runs on a cell. A sandbox is a
// Cello pod (its cell is the sandbox: one VM, its own network); its containers are that pod's
// units. What a VM per pod cannot mean (the node's namespaces, the node's files, privileged
// access to the node) is refused here, naming the field, before anything is created.
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { CelloError } from '@cello/proto';
import {
  NamespaceMode,
  Protocol,
  SecurityProfile_ProfileType,
  Signal,
  SupplementalGroupsPolicy,
  type ContainerConfig,
  type LinuxContainerResources,
  type NamespaceOption,
  type PodSandboxConfig,
  type SecurityProfile,
} from '../gen/runtime/v1/api.js';
import type { SandboxRecord } from './sandbox-store.js';
import { hostAliasesOf, podVolumes, volumeMountsOf, type MappedMount } from './kubelet-mounts.js';

/** The unit that holds the cell's pod while the kubelet has no container in it (containerd's pause container). */
export const SANDBOX_UNIT = 'cello-sandbox';
/** Annotation on the Cello pod naming the CRI sandbox it is. */
export const SANDBOX_ID_ANNOTATION = 'cri.cello.io/sandbox-id';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function refuse(field: string, why: string): never {
  throw new CelloError('InvalidArgument', `${field}: ${why}`);
}

function checkNamespaces(field: string, ns: NamespaceOption | undefined): void {
  if (!ns) return;
  const vm = 'a pod runs on a cell of its own (a VM), so it cannot share a namespace with this node';
  if (ns.network === NamespaceMode.NODE) refuse(`${field}.network`, `NODE (hostNetwork) is not supported: ${vm}`);
  if (ns.pid === NamespaceMode.NODE) refuse(`${field}.pid`, `NODE (hostPID) is not supported: ${vm}`);
  if (ns.ipc === NamespaceMode.NODE) refuse(`${field}.ipc`, `NODE (hostIPC) is not supported: ${vm}`);
  if (ns.pid === NamespaceMode.TARGET || ns.targetId) refuse(`${field}.pid`, "TARGET (sharing another container's PID namespace) is not supported by cello-cri");
  if (ns.usernsOptions && ns.usernsOptions.mode !== NamespaceMode.NODE) refuse(`${field}.userns_options`, 'user namespaces (hostUsers: false) are not supported by cello-cri');
}

/**
 * The seccomp profile as a Kubernetes seccompProfile, as containerd reads the CRI: the `seccomp`
 * field, else the legacy path, else (nil) Unconfined. Always explicit, so the cell's own default
 * (RuntimeDefault, the virtual node's) never applies to a CRI container. Localhost profiles live
 * on this node, not the cell.
 */
function seccomp(field: string, p: SecurityProfile | undefined, legacyPath: string): Record<string, unknown> {
  if (p) {
    if (p.profileType === SecurityProfile_ProfileType.Localhost)
      refuse(`${field}.seccomp`, `Localhost profile ${JSON.stringify(p.localhostRef)} is on this node, which the pod's cell cannot read`);
    return { type: p.profileType === SecurityProfile_ProfileType.RuntimeDefault ? 'RuntimeDefault' : 'Unconfined' };
  }
  if (legacyPath === 'runtime/default' || legacyPath === 'docker/default') return { type: 'RuntimeDefault' };
  if (legacyPath === '' || legacyPath === 'unconfined') return { type: 'Unconfined' };
  refuse(`${field}.seccomp_profile_path`, `${JSON.stringify(legacyPath)} is a profile on this node, which the pod's cell cannot read`);
}

/** Refuses what a sandbox on a cell cannot be; returns the Cello pod's name. */
export function checkSandboxConfig(config: PodSandboxConfig | undefined, runtimeHandler: string, id: string): { podName: string; namespace: string } {
  if (!config) refuse('config', 'is required');
  if (runtimeHandler) refuse('runtime_handler', `${JSON.stringify(runtimeHandler)}: cello-cri has one runtime handler, the default ("")`);
  const m = config.metadata;
  if (!m?.name) refuse('config.metadata.name', 'is required');
  if (!m.namespace) refuse('config.metadata.namespace', 'is required');
  if (!m.uid) refuse('config.metadata.uid', 'is required');
  if (!DNS_LABEL.test(m.namespace) || m.namespace.length > 63)
    refuse('config.metadata.namespace', `${JSON.stringify(m.namespace)} must be a DNS label (the Cello pod's namespace)`);
  const base = m.name.toLowerCase();
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(base)) refuse('config.metadata.name', `${JSON.stringify(m.name)} must be a DNS subdomain (it names the Cello pod)`);
  if (config.hostname && (!DNS_LABEL.test(config.hostname) || config.hostname.length > 63)) refuse('config.hostname', `${JSON.stringify(config.hostname)} must be a DNS label`);
  const sc = config.linux?.securityContext;
  checkNamespaces('config.linux.security_context.namespace_options', sc?.namespaceOptions);
  // privileged is accepted: it allows privileged containers, whose privilege is over their own cell (the pod's VM).
  if (sc?.selinuxOptions && Object.values(sc.selinuxOptions).some((v) => v)) refuse('config.linux.security_context.selinux_options', 'SELinux labels are not supported on cells');
  if (sc?.apparmor && sc.apparmor.profileType === SecurityProfile_ProfileType.Localhost)
    refuse('config.linux.security_context.apparmor', 'a Localhost AppArmor profile is on this node, which the cell cannot load');
  if (!sc?.privileged) seccomp('config.linux.security_context', sc?.seccomp, sc?.seccompProfilePath ?? '');
  config.portMappings.forEach((p, i) => {
    if (p.protocol === Protocol.UNRECOGNIZED) refuse(`config.port_mappings[${i}].protocol`, 'unknown protocol');
    // A host port listens on this node and is relayed to the cell (host-ports.ts): TCP and UDP.
    if (p.hostPort > 0 && p.protocol === Protocol.SCTP)
      refuse(`config.port_mappings[${i}].protocol`, 'an SCTP host port cannot be relayed from this node to the cell (TCP and UDP can)');
    if (p.hostPort < 0 || p.hostPort > 65535) refuse(`config.port_mappings[${i}].host_port`, `${p.hostPort} is not a port`);
    if (p.hostPort > 0 && (p.containerPort <= 0 || p.containerPort > 65535)) refuse(`config.port_mappings[${i}].container_port`, `${p.containerPort} is not a port`);
    if (p.hostIp && !isIP(p.hostIp)) refuse(`config.port_mappings[${i}].host_ip`, `${JSON.stringify(p.hostIp)} is not an IP address`);
  });
  for (const k of Object.keys(config.windows ?? {})) if ((config.windows as unknown as Record<string, unknown>)[k]) refuse('config.windows', 'cells are Linux');
  // The pod's name: the sandbox name with a piece of its ID, so attempts never collide.
  return { podName: `${base.slice(0, 54).replace(/[-.]+$/, '')}-${id.slice(0, 8)}`, namespace: m.namespace };
}

function protocolName(p: Protocol): 'TCP' | 'UDP' | 'SCTP' {
  return p === Protocol.UDP ? 'UDP' : p === Protocol.SCTP ? 'SCTP' : 'TCP';
}

export function portMappingsOf(config: PodSandboxConfig): SandboxRecord['portMappings'] {
  return config.portMappings.map((p) => ({ protocol: protocolName(p.protocol), containerPort: p.containerPort, hostPort: p.hostPort, hostIp: p.hostIp }));
}

/** Kubernetes resources from the CRI's cgroup figures (the kubelet derived them from the same spec). */
export function resourcesOf(r: LinuxContainerResources | undefined): Record<string, Record<string, string>> | undefined {
  if (!r) return undefined;
  const limits: Record<string, string> = {};
  const requests: Record<string, string> = {};
  if (r.cpuQuota > 0n && r.cpuPeriod > 0n) limits.cpu = `${(r.cpuQuota * 1000n) / r.cpuPeriod}m`;
  if (r.memoryLimitInBytes > 0n) limits.memory = String(r.memoryLimitInBytes);
  // 2 shares is the kubelet's "no request" (the kernel's minimum).
  if (r.cpuShares > 2n) requests.cpu = `${(r.cpuShares * 1000n) / 1024n}m`;
  if (Object.keys(limits).length === 0 && Object.keys(requests).length === 0) return undefined;
  return { ...(Object.keys(limits).length ? { limits } : {}), ...(Object.keys(requests).length ? { requests } : {}) };
}

const capName = (c: string) => c.replace(/^CAP_/, '');

// A path to mask or make read-only: absolute, no `..` (runc resolves it inside the container).
function procPath(field: string, p: string): void {
  if (!p.startsWith('/') || p.split('/').includes('..')) refuse(field, `${JSON.stringify(p)}: must be an absolute path without '..'`);
}

/** The Kubernetes container a CRI container runs as, on its pod's cell; refuses what a cell cannot mean. */
export function containerSpec(config: ContainerConfig, unit: string, imageRef: string, mounts: MappedMount[] = [], sandboxPrivileged = false): Record<string, unknown> {
  if (config.devices.length) refuse('config.devices', "a container on a cell cannot use this node's devices");
  if (config.CDIDevices.length) refuse('config.CDI_devices', "a container on a cell cannot use this node's devices");
  if (config.stopSignal !== Signal.RUNTIME_DEFAULT) refuse('config.stop_signal', "only the image's stop signal (RUNTIME_DEFAULT) is supported");
  const sc = config.linux?.securityContext;
  checkNamespaces('config.linux.security_context.namespace_options', sc?.namespaceOptions);
  // A privileged container is privileged over its own cell (the pod's VM): the agent's bounding
  // set, the cell's devices, /sys writable, no seccomp profile, /proc unmasked; never this node.
  // As containerd and the kubelet: only in a privileged sandbox.
  if (sc?.privileged && !sandboxPrivileged) refuse('config.linux.security_context.privileged', 'no privileged container allowed in sandbox: the sandbox is not privileged');
  if (sc?.selinuxOptions && Object.values(sc.selinuxOptions).some((v) => v)) refuse('config.linux.security_context.selinux_options', 'SELinux labels are not supported on cells');
  if (
    (sc?.apparmor && sc.apparmor.profileType === SecurityProfile_ProfileType.Localhost) ||
    (sc?.apparmorProfile && !['runtime/default', 'unconfined'].includes(sc.apparmorProfile))
  )
    refuse('config.linux.security_context.apparmor', 'a Localhost AppArmor profile is on this node, which the cell cannot load');
  // As the kubelet and containerd: a group alone would run as the image's user with another group.
  if (sc?.runAsGroup && !sc.runAsUser && !sc.runAsUsername) refuse('config.linux.security_context.run_as_group', 'run_as_group needs run_as_user (or run_as_username) to be set');
  if (sc?.runAsUsername && !/^[^:\s/]+$/.test(sc.runAsUsername))
    refuse('config.linux.security_context.run_as_username', `${JSON.stringify(sc.runAsUsername)}: must be a user name (resolved in the image's /etc/passwd)`);
  (sc?.maskedPaths ?? []).forEach((x, i) => procPath(`config.linux.security_context.masked_paths[${i}]`, x));
  (sc?.readonlyPaths ?? []).forEach((x, i) => procPath(`config.linux.security_context.readonly_paths[${i}]`, x));
  if (sc?.capabilities?.addAmbientCapabilities.length) refuse('config.linux.security_context.capabilities.add_ambient_capabilities', 'ambient capabilities are not supported');
  const securityContext: Record<string, unknown> = {};
  if (sc?.privileged) securityContext.privileged = true;
  if (sc?.runAsUser) securityContext.runAsUser = Number(sc.runAsUser.value);
  if (sc?.runAsGroup) securityContext.runAsGroup = Number(sc.runAsGroup.value);
  if (sc?.readonlyRootfs) securityContext.readOnlyRootFilesystem = true;
  if (sc?.noNewPrivs) securityContext.allowPrivilegeEscalation = false;
  const caps = sc?.capabilities;
  if (caps && (caps.addCapabilities.length || caps.dropCapabilities.length)) {
    securityContext.capabilities = {
      ...(caps.addCapabilities.length ? { add: caps.addCapabilities.map(capName) } : {}),
      ...(caps.dropCapabilities.length ? { drop: caps.dropCapabilities.map(capName) } : {}),
    };
  }
  // As containerd: a privileged container runs without seccomp, whatever profile is named.
  if (!sc?.privileged) securityContext.seccompProfile = seccomp('config.linux.security_context', sc?.seccomp, sc?.seccompProfilePath ?? '');
  // The CRI's fields the Kubernetes API has no name for (the agent's securityContext.cri). The
  // lists as containerd takes them: as given, an empty one meaning none (the kubelet sends the
  // defaults unless procMount is Unmasked); the agent ignores them for a privileged container.
  securityContext.cri = {
    maskedPaths: sc?.maskedPaths ?? [],
    readonlyPaths: sc?.readonlyPaths ?? [],
    ...(sc?.runAsUsername && !sc.runAsUser ? { runAsUsername: sc.runAsUsername } : {}),
    ...(sc?.supplementalGroups.length ? { supplementalGroups: sc.supplementalGroups.map(Number) } : {}),
    ...(sc?.supplementalGroupsPolicy === SupplementalGroupsPolicy.Strict ? { supplementalGroupsPolicy: 'Strict' } : {}),
  };
  const resources = resourcesOf(config.linux?.resources);
  const { volumeMounts, terminationMessagePath } = volumeMountsOf(mounts);
  return {
    name: unit,
    image: imageRef,
    // The node never holds layers; the cell pulls the image when the unit first starts.
    imagePullPolicy: 'IfNotPresent',
    ...(config.command.length ? { command: config.command } : {}),
    ...(config.args.length ? { args: config.args } : {}),
    ...(config.workingDir ? { workingDir: config.workingDir } : {}),
    ...(config.envs.length ? { env: config.envs.map((e) => ({ name: e.key, value: e.value })) } : {}),
    ...(resources ? { resources } : {}),
    ...(Object.keys(securityContext).length ? { securityContext } : {}),
    ...(config.stdin ? { stdin: true } : {}),
    ...(config.stdinOnce ? { stdinOnce: true } : {}),
    ...(config.tty ? { tty: true } : {}),
    ...(volumeMounts.length ? { volumeMounts } : {}),
    ...(terminationMessagePath ? { terminationMessagePath } : {}),
  };
}

/**
 * The unit's name on the cell, a DNS label: the CRI name (lowercased) and attempt, since a
 * restarted container is another unit. A name that does not fit as it is (too long, other
 * characters) is shortened and given a hash of the whole name, so two names never share a unit.
 */
export function unitName(config: ContainerConfig): string {
  const m = config.metadata;
  if (!m?.name) refuse('config.metadata.name', 'is required');
  const suffix = `-${m.attempt}`;
  const plain = `${m.name}${suffix}`;
  if (DNS_LABEL.test(plain) && plain.length <= 63 && plain !== SANDBOX_UNIT) return plain;
  const hash = createHash('sha256').update(m.name).digest('hex').slice(0, 8);
  const tail = `-${hash}${suffix}`;
  const head = m.name
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .slice(0, 63 - tail.length)
    .replace(/^-+|-+$/g, '');
  return `${head || 'c'}${tail}`;
}

function dnsOptions(options: string[]): Array<{ name: string; value?: string }> {
  return options.map((o) => {
    const i = o.indexOf(':');
    return i < 0 ? { name: o } : { name: o.slice(0, i), value: o.slice(i + 1) };
  });
}

/**
 * The Cello pod of a sandbox with the containers that run now (started, not stopped): the whole
 * set each time, so the cell converges to it (the controller's apply is declarative).
 * restartPolicy Never: the kubelet decides restarts (a new container, attempt + 1).
 */
export function podManifest(s: SandboxRecord, o: { sandboxImage: string; sysctls: Record<string, string>; graceSeconds?: number; podDirectory?: string }): string {
  const started = s.containers.filter((c) => c.phase === 'started');
  const running = started.map((c) => c.spec);
  // The kubelet's volume files are read now: every apply ships their current content.
  const mounts = started.flatMap((c) => c.mounts ?? []);
  const { volumes, secrets } = mounts.length && o.podDirectory ? podVolumes(mounts, o.podDirectory) : { volumes: [], secrets: [] };
  const ports = s.portMappings.filter((p) => p.hostPort > 0).map((p) => ({ containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol }));
  const sandboxUnit = { name: SANDBOX_UNIT, image: o.sandboxImage, imagePullPolicy: 'IfNotPresent', ...(ports.length ? { ports } : {}) };
  const sysctls = Object.entries(o.sysctls).map(([name, value]) => ({ name, value }));
  // The kubelet's etc-hosts of the pod (every container mounts the same file) carries its hostAliases.
  const hostsFile = mounts.find((m) => m.kind === 'hosts')?.hostPath;
  const hostAliases = hostsFile ? hostAliasesOf(hostsFile) : [];
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: s.pod.name, namespace: s.pod.namespace, labels: s.labels, annotations: { ...s.annotations, [SANDBOX_ID_ANNOTATION]: s.id } },
    spec: {
      restartPolicy: 'Never',
      ...(s.hostname ? { hostname: s.hostname } : {}),
      ...(s.dnsConfig
        ? { dnsPolicy: 'None', dnsConfig: { nameservers: s.dnsConfig.servers, searches: s.dnsConfig.searches, options: dnsOptions(s.dnsConfig.options) } }
        : { dnsPolicy: 'Default' }),
      ...(o.graceSeconds !== undefined ? { terminationGracePeriodSeconds: o.graceSeconds } : {}),
      ...(sysctls.length ? { securityContext: { sysctls } } : {}),
      ...(hostAliases.length ? { hostAliases } : {}),
      ...(s.sharePid ? { shareProcessNamespace: true } : {}),
      containers: [sandboxUnit, ...running],
      ...(volumes.length ? { volumes } : {}),
    },
  };
  return [pod, ...secrets].map((d) => JSON.stringify(d)).join('\n---\n');
}
