// Kubernetes v1 manifests → cello.cell.v1 messages. Checks what Kubernetes' API server would
// refuse (names, references between fields, ranges), so a bad pod is refused at the door with
// the offending field named, not half-started on a cell.
import { Buffer } from 'node:buffer';
import { isIP } from 'node:net';
import { parseAllDocuments } from 'yaml';
import type { z } from 'zod';
import {
  type ConfigMapData,
  type Container,
  type CriSecurityContext,
  ContainerRestartPolicy,
  type EnvVar,
  type Handler,
  HostPathType,
  type Pod,
  type PortRef,
  type Probe,
  Protocol,
  PullPolicy,
  type ResourceList,
  RestartPolicy,
  type SecretData,
  type SeccompProfile,
  SeccompProfileType,
  StorageMedium,
  TerminationMessagePolicy,
  type Volume,
} from '../cell.js';
import { parseBytes, parseCount, parseCpuMillis, QuantityError } from '../quantity.js';
import { LINUX_STOP_SIGNALS } from '../signals.js';
import { fieldPath, ManifestError } from './errors.js';
import { isDockerConfigType, parseDockerConfigSecret } from './docker-config.js';
import * as schema from './schema.js';
import { refuseUnsupported } from './unsupported.js';

type Path = (string | number)[];

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const PORT_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const ENV_NAME = /^[^=]+$/;
const CONFIG_KEY = /^[-._a-zA-Z0-9]+$/;

function fail(path: Path, problem: string): never {
  throw new ManifestError(fieldPath(path), problem);
}

function checkDnsLabel(path: Path, v: string): void {
  if (v.length === 0) fail(path, 'is required');
  if (v.length > 63 || !DNS_LABEL.test(v)) fail(path, `"${v}" must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending alphanumeric`);
}

function checkDnsSubdomain(path: Path, v: string): void {
  if (v.length === 0) fail(path, 'is required');
  if (v.length > 253 || !DNS_SUBDOMAIN.test(v)) fail(path, `"${v}" must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters`);
}

/** A path inside a volume or mount: relative, no `..` element. */
function checkRelativePath(path: Path, v: string): void {
  if (v.startsWith('/')) fail(path, `"${v}" must be a relative path`);
  if (v.split('/').includes('..')) fail(path, `"${v}" must not contain '..'`);
}

function checkMode(path: Path, mode: number | undefined): void {
  if (mode !== undefined && (mode < 0 || mode > 0o777)) fail(path, `${mode} is not a file mode between 0 and 0777 (511)`);
}

function checkPort(path: Path, n: number): void {
  if (n < 1 || n > 65535) fail(path, `${n} is not a port between 1 and 65535`);
}

function quantity<T>(path: Path, parse: (q: string | number) => T, q: string | number): T {
  try {
    return parse(q);
  } catch (err) {
    if (err instanceof QuantityError) fail(path, err.message);
    throw err;
  }
}

function resourceList(path: Path, list: Record<string, string | number> | undefined): ResourceList | undefined {
  if (!list) return undefined;
  const out: ResourceList = { extended: {} };
  for (const [name, q] of Object.entries(list)) {
    const p = [...path, name];
    if (name === 'cpu') out.cpuMillis = quantity(p, parseCpuMillis, q);
    else if (name === 'memory') out.memoryBytes = quantity(p, parseBytes, q);
    else if (name === 'ephemeral-storage') out.ephemeralStorageBytes = quantity(p, parseBytes, q);
    else if (name.includes('/') || name.startsWith('hugepages-')) out.extended[name] = quantity(p, parseCount, q);
    else fail(p, `unknown resource "${name}": expected cpu, memory, ephemeral-storage or a domain-qualified extended resource such as nvidia.com/gpu`);
  }
  return out;
}

function portRef(path: Path, port: number | string, portNames: Set<string>): PortRef {
  if (typeof port === 'number') {
    checkPort(path, port);
    return { value: { $case: 'number', value: port } };
  }
  if (/^\d+$/.test(port)) {
    const n = Number(port);
    checkPort(path, n);
    return { value: { $case: 'number', value: n } };
  }
  if (!portNames.has(port)) fail(path, `names port "${port}", which this container does not declare in ports`);
  return { value: { $case: 'name', value: port } };
}

/** `graceSeconds`: given for lifecycle hooks, whose sleep may not outlast the grace period. */
function handler(path: Path, h: schema.HandlerManifest | schema.ProbeManifest, portNames: Set<string>, graceSeconds?: number): Handler {
  const sleep = 'sleep' in h ? h.sleep : undefined;
  const kinds = graceSeconds === undefined ? (['exec', 'httpGet', 'tcpSocket', 'grpc'] as const) : (['exec', 'httpGet', 'tcpSocket', 'grpc', 'sleep'] as const);
  const set = kinds.filter((k) => (k === 'sleep' ? sleep : h[k]) !== undefined);
  if (set.length !== 1) fail(path, set.length === 0 ? `needs one handler: ${kinds.join(', ')}` : `has ${set.join(' and ')}: give exactly one handler`);
  if (sleep) {
    if (sleep.seconds < 0) fail([...path, 'sleep', 'seconds'], `${sleep.seconds} must be non-negative`);
    if (graceSeconds !== undefined && sleep.seconds > graceSeconds)
      fail([...path, 'sleep', 'seconds'], `${sleep.seconds} must be less than terminationGracePeriodSeconds (${graceSeconds})`);
    return { action: { $case: 'sleep', value: { seconds: sleep.seconds } } };
  }
  if (h.exec) {
    if (h.exec.command.length === 0) fail([...path, 'exec', 'command'], 'must not be empty');
    return { action: { $case: 'exec', value: { command: h.exec.command } } };
  }
  if (h.httpGet) {
    const g = h.httpGet;
    return {
      action: {
        $case: 'httpGet',
        value: {
          path: g.path ?? '/',
          port: portRef([...path, 'httpGet', 'port'], g.port, portNames),
          host: g.host ?? '',
          scheme: g.scheme ?? 'HTTP',
          httpHeaders: g.httpHeaders ?? [],
        },
      },
    };
  }
  if (h.tcpSocket) {
    return {
      action: {
        $case: 'tcpSocket',
        value: { port: portRef([...path, 'tcpSocket', 'port'], h.tcpSocket.port, portNames), host: h.tcpSocket.host ?? '' },
      },
    };
  }
  const g = h.grpc!;
  checkPort([...path, 'grpc', 'port'], g.port);
  return { action: { $case: 'grpc', value: { port: g.port, service: g.service ?? '' } } };
}

function probe(path: Path, p: schema.ProbeManifest | undefined, portNames: Set<string>): Probe | undefined {
  if (!p) return undefined;
  for (const f of ['initialDelaySeconds', 'timeoutSeconds', 'periodSeconds', 'successThreshold', 'failureThreshold'] as const) {
    const v = p[f];
    if (v !== undefined && v < (f === 'initialDelaySeconds' ? 0 : 1)) fail([...path, f], `${v} is too small (minimum ${f === 'initialDelaySeconds' ? 0 : 1})`);
  }
  return {
    handler: handler(path, p, portNames),
    initialDelaySeconds: p.initialDelaySeconds ?? 0,
    timeoutSeconds: p.timeoutSeconds,
    periodSeconds: p.periodSeconds,
    successThreshold: p.successThreshold,
    failureThreshold: p.failureThreshold,
    terminationGracePeriodSeconds: p.terminationGracePeriodSeconds,
  };
}

// Paths the unit masks or makes read-only: absolute, no `..` (runc resolves them in the container).
function procPaths(path: Path, paths: string[]): string[] {
  paths.forEach((x, i) => {
    if (!x.startsWith('/') || x.split('/').includes('..')) fail([...path, i], `${JSON.stringify(x)}: must be an absolute path without '..'`);
  });
  return paths;
}

function criSecurityContext(path: Path, c: NonNullable<NonNullable<schema.ContainerManifest['securityContext']>['cri']>): CriSecurityContext {
  if (c.runAsUsername !== undefined && !/^[^:\s/]+$/.test(c.runAsUsername)) fail([...path, 'runAsUsername'], `${JSON.stringify(c.runAsUsername)}: must be a user name`);
  const masked = c.maskedPaths !== undefined || c.readonlyPaths !== undefined;
  return {
    procPaths: masked ? { masked: procPaths([...path, 'maskedPaths'], c.maskedPaths ?? []), readonly: procPaths([...path, 'readonlyPaths'], c.readonlyPaths ?? []) } : undefined,
    runAsUsername: c.runAsUsername ?? '',
    supplementalGroups: c.supplementalGroups ?? [],
    supplementalGroupsPolicy: c.supplementalGroupsPolicy ?? '',
  };
}

function seccomp(p: { type: string; localhostProfile?: string | undefined } | undefined, path: Path): SeccompProfile | undefined {
  if (!p) return undefined;
  const type = {
    RuntimeDefault: SeccompProfileType.SECCOMP_PROFILE_TYPE_RUNTIME_DEFAULT,
    Unconfined: SeccompProfileType.SECCOMP_PROFILE_TYPE_UNCONFINED,
    Localhost: SeccompProfileType.SECCOMP_PROFILE_TYPE_LOCALHOST,
  }[p.type]!;
  if (type === SeccompProfileType.SECCOMP_PROFILE_TYPE_LOCALHOST) {
    if (!p.localhostProfile) fail([...path, 'localhostProfile'], 'is required when type is Localhost');
    checkRelativePath([...path, 'localhostProfile'], p.localhostProfile);
  } else if (p.localhostProfile) fail([...path, 'localhostProfile'], 'may only be set when type is Localhost');
  return { type, localhostProfile: p.localhostProfile ?? '' };
}

function envVar(path: Path, e: schema.EnvVarManifest): EnvVar {
  if (!ENV_NAME.test(e.name)) fail([...path, 'name'], `"${e.name}" is not a valid environment variable name`);
  if (!e.valueFrom) return { name: e.name, value: e.value ?? '', valueFrom: undefined };
  if (e.value !== undefined && e.value !== '') fail([...path, 'valueFrom'], 'may not be set together with value');
  const vf = e.valueFrom;
  const set = (['secretKeyRef', 'configMapKeyRef', 'fieldRef', 'resourceFieldRef'] as const).filter((k) => vf[k] !== undefined);
  if (set.length !== 1) fail([...path, 'valueFrom'], 'needs exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef');
  const src =
    vf.secretKeyRef !== undefined
      ? ({ $case: 'secretKeyRef', value: { name: vf.secretKeyRef.name, key: vf.secretKeyRef.key, optional: vf.secretKeyRef.optional ?? false } } as const)
      : vf.configMapKeyRef !== undefined
        ? ({ $case: 'configMapKeyRef', value: { name: vf.configMapKeyRef.name, key: vf.configMapKeyRef.key, optional: vf.configMapKeyRef.optional ?? false } } as const)
        : vf.fieldRef !== undefined
          ? ({ $case: 'fieldRef', value: { fieldPath: vf.fieldRef.fieldPath } } as const)
          : ({
              $case: 'resourceFieldRef',
              value: {
                containerName: vf.resourceFieldRef!.containerName ?? '',
                resource: vf.resourceFieldRef!.resource,
                divisor: String(vf.resourceFieldRef!.divisor ?? ''),
              },
            } as const);
  return { name: e.name, value: '', valueFrom: { source: src } };
}

/** What a container's checks need from its pod. */
interface PodContext {
  volumeNames: Set<string>;
  graceSeconds: number;
  osName: string;
}

function container(path: Path, c: schema.ContainerManifest, pod: PodContext, init: boolean): Container {
  const volumeNames = pod.volumeNames;
  checkDnsLabel([...path, 'name'], c.name);
  if (!c.image) fail([...path, 'image'], 'is required');
  const portNames = new Set<string>();
  const ports = (c.ports ?? []).map((p, i) => {
    const pp = [...path, 'ports', i];
    checkPort([...pp, 'containerPort'], p.containerPort);
    if (p.hostPort !== undefined && p.hostPort !== 0) checkPort([...pp, 'hostPort'], p.hostPort);
    if (p.hostIP !== undefined && p.hostIP !== '') {
      if (!p.hostPort) fail([...pp, 'hostIP'], 'may only be set together with hostPort');
      if (isIP(p.hostIP) !== 4) fail([...pp, 'hostIP'], `"${p.hostIP}" is not an IPv4 address (a cell serves hostPorts on its IPv4 addresses)`);
    }
    if (p.name !== undefined) {
      if (p.name.length > 15 || !PORT_NAME.test(p.name) || !/[a-z]/.test(p.name))
        fail([...pp, 'name'], `"${p.name}" must be at most 15 lowercase letters, digits and '-', with at least one letter`);
      if (portNames.has(p.name)) fail([...pp, 'name'], `duplicate port name "${p.name}"`);
      portNames.add(p.name);
    }
    const protocol = { TCP: Protocol.PROTOCOL_TCP, UDP: Protocol.PROTOCOL_UDP, SCTP: Protocol.PROTOCOL_SCTP }[p.protocol ?? 'TCP'];
    return { name: p.name ?? '', containerPort: p.containerPort, protocol, hostPort: p.hostPort ?? 0, hostIp: p.hostIP === '0.0.0.0' ? '' : (p.hostIP ?? '') };
  });
  const mountPaths = new Set<string>();
  const volumeMounts = (c.volumeMounts ?? []).map((m, i) => {
    const mp = [...path, 'volumeMounts', i];
    if (!volumeNames.has(m.name)) fail([...mp, 'name'], `volume "${m.name}" is not declared in spec.volumes`);
    if (!m.mountPath.startsWith('/')) fail([...mp, 'mountPath'], `"${m.mountPath}" must be an absolute path`);
    if (mountPaths.has(m.mountPath)) fail([...mp, 'mountPath'], `"${m.mountPath}" is mounted twice`);
    mountPaths.add(m.mountPath);
    if (m.subPath) checkRelativePath([...mp, 'subPath'], m.subPath);
    if (m.subPath && m.subPathExpr) fail([...mp, 'subPathExpr'], 'may not be set together with subPath');
    return { name: m.name, mountPath: m.mountPath, readOnly: m.readOnly ?? false, subPath: m.subPath ?? '', subPathExpr: m.subPathExpr ?? '' };
  });
  const requests = resourceList([...path, 'resources', 'requests'], c.resources?.requests);
  const limits = resourceList([...path, 'resources', 'limits'], c.resources?.limits);
  for (const k of ['cpuMillis', 'memoryBytes', 'ephemeralStorageBytes'] as const) {
    const r = requests?.[k];
    const l = limits?.[k];
    if (r !== undefined && l !== undefined && r > l) {
      const name = { cpuMillis: 'cpu', memoryBytes: 'memory', ephemeralStorageBytes: 'ephemeral-storage' }[k];
      fail([...path, 'resources', 'requests', name], `must be less than or equal to the ${name} limit`);
    }
  }
  // Native sidecars: an init container with restartPolicy Always; the only value, only there.
  if (c.restartPolicy !== undefined) {
    if (!init) fail([...path, 'restartPolicy'], 'may not be set for non-init containers');
    if (c.restartPolicy !== 'Always') fail([...path, 'restartPolicy'], `unsupported value "${c.restartPolicy}": supported values: "Always"`);
  }
  const sidecar = init && c.restartPolicy === 'Always';
  if (init && !sidecar) {
    for (const f of ['livenessProbe', 'readinessProbe', 'startupProbe', 'lifecycle'] as const)
      if (c[f]) fail([...path, f], 'may not be set for init containers without restartPolicy Always');
  }
  const stopSignal = c.lifecycle?.stopSignal;
  if (stopSignal !== undefined) {
    const sp = [...path, 'lifecycle', 'stopSignal'];
    if (!pod.osName) fail(sp, 'may not be set for containers with empty `spec.os.name`');
    if (!LINUX_STOP_SIGNALS.has(stopSignal)) fail(sp, `unsupported value "${stopSignal}": a Linux signal name such as SIGTERM, SIGINT, SIGQUIT, SIGUSR1 or SIGRTMIN+1`);
  }
  const sc = c.securityContext;
  if (sc?.privileged && sc.allowPrivilegeEscalation === false) fail([...path, 'securityContext', 'allowPrivilegeEscalation'], 'cannot be false when privileged is true');
  return {
    name: c.name,
    image: c.image,
    command: c.command ?? [],
    args: c.args ?? [],
    env: (c.env ?? []).map((e, i) => envVar([...path, 'env', i], e)),
    envFrom: (c.envFrom ?? []).map((e, i) => {
      const ep = [...path, 'envFrom', i];
      if ((e.configMapRef === undefined) === (e.secretRef === undefined)) fail(ep, 'needs exactly one of configMapRef or secretRef');
      const source = e.configMapRef
        ? ({ $case: 'configMapRef', value: { name: e.configMapRef.name, optional: e.configMapRef.optional ?? false } } as const)
        : ({ $case: 'secretRef', value: { name: e.secretRef!.name, optional: e.secretRef!.optional ?? false } } as const);
      return { prefix: e.prefix ?? '', source };
    }),
    workingDir: c.workingDir ?? '',
    ports,
    volumeMounts,
    resources: requests || limits ? { requests, limits } : undefined,
    livenessProbe: probe([...path, 'livenessProbe'], c.livenessProbe, portNames),
    readinessProbe: probe([...path, 'readinessProbe'], c.readinessProbe, portNames),
    startupProbe: probe([...path, 'startupProbe'], c.startupProbe, portNames),
    lifecycle: c.lifecycle
      ? {
          postStart: c.lifecycle.postStart ? handler([...path, 'lifecycle', 'postStart'], c.lifecycle.postStart, portNames, pod.graceSeconds) : undefined,
          preStop: c.lifecycle.preStop ? handler([...path, 'lifecycle', 'preStop'], c.lifecycle.preStop, portNames, pod.graceSeconds) : undefined,
          stopSignal: stopSignal ?? '',
        }
      : undefined,
    securityContext: sc
      ? {
          runAsUser: sc.runAsUser,
          runAsGroup: sc.runAsGroup,
          runAsNonRoot: sc.runAsNonRoot,
          capabilities: sc.capabilities ? { add: sc.capabilities.add ?? [], drop: sc.capabilities.drop ?? [] } : undefined,
          readOnlyRootFilesystem: sc.readOnlyRootFilesystem,
          privileged: sc.privileged,
          allowPrivilegeEscalation: sc.allowPrivilegeEscalation,
          seccompProfile: seccomp(sc.seccompProfile, [...path, 'securityContext', 'seccompProfile']),
          cri: sc.cri ? criSecurityContext([...path, 'securityContext', 'cri'], sc.cri) : undefined,
        }
      : undefined,
    stdin: c.stdin ?? false,
    stdinOnce: c.stdinOnce ?? false,
    tty: c.tty ?? false,
    terminationMessagePath: c.terminationMessagePath ?? '/dev/termination-log',
    terminationMessagePolicy:
      c.terminationMessagePolicy === 'FallbackToLogsOnError'
        ? TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FALLBACK_TO_LOGS_ON_ERROR
        : TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FILE,
    imagePullPolicy: pullPolicy(c.image, c.imagePullPolicy),
    restartPolicy: sidecar ? ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS : ContainerRestartPolicy.CONTAINER_RESTART_POLICY_UNSPECIFIED,
    targetContainerName: '',
  };
}

/** Kubernetes' default: Always for :latest or an untagged image, IfNotPresent otherwise. */
function pullPolicy(image: string, given: 'Always' | 'IfNotPresent' | 'Never' | undefined): PullPolicy {
  if (given === 'Always') return PullPolicy.PULL_POLICY_ALWAYS;
  if (given === 'IfNotPresent') return PullPolicy.PULL_POLICY_IF_NOT_PRESENT;
  if (given === 'Never') return PullPolicy.PULL_POLICY_NEVER;
  if (image.includes('@')) return PullPolicy.PULL_POLICY_IF_NOT_PRESENT;
  const lastSlash = image.lastIndexOf('/');
  const colon = image.lastIndexOf(':');
  const tag = colon > lastSlash ? image.slice(colon + 1) : '';
  return tag === '' || tag === 'latest' ? PullPolicy.PULL_POLICY_ALWAYS : PullPolicy.PULL_POLICY_IF_NOT_PRESENT;
}

function items(path: Path, list: { key: string; path: string; mode?: number | undefined }[] | undefined) {
  return (list ?? []).map((it, i) => {
    checkRelativePath([...path, i, 'path'], it.path);
    checkMode([...path, i, 'mode'], it.mode);
    return { key: it.key, path: it.path, mode: it.mode };
  });
}

function downwardItems(path: Path, list: schema.DownwardApiFileManifest[] | undefined) {
  return (list ?? []).map((it, i) => {
    const ip = [...path, i];
    checkRelativePath([...ip, 'path'], it.path);
    checkMode([...ip, 'mode'], it.mode);
    if ((it.fieldRef === undefined) === (it.resourceFieldRef === undefined)) fail(ip, 'needs exactly one of fieldRef or resourceFieldRef');
    return {
      path: it.path,
      fieldRef: it.fieldRef ? { fieldPath: it.fieldRef.fieldPath } : undefined,
      resourceFieldRef: it.resourceFieldRef
        ? { containerName: it.resourceFieldRef.containerName ?? '', resource: it.resourceFieldRef.resource, divisor: String(it.resourceFieldRef.divisor ?? '') }
        : undefined,
      mode: it.mode,
    };
  });
}

const HOST_PATH_TYPES: Record<string, HostPathType> = {
  '': HostPathType.HOST_PATH_TYPE_UNSPECIFIED,
  DirectoryOrCreate: HostPathType.HOST_PATH_TYPE_DIRECTORY_OR_CREATE,
  Directory: HostPathType.HOST_PATH_TYPE_DIRECTORY,
  FileOrCreate: HostPathType.HOST_PATH_TYPE_FILE_OR_CREATE,
  File: HostPathType.HOST_PATH_TYPE_FILE,
  Socket: HostPathType.HOST_PATH_TYPE_SOCKET,
  CharDevice: HostPathType.HOST_PATH_TYPE_CHAR_DEVICE,
  BlockDevice: HostPathType.HOST_PATH_TYPE_BLOCK_DEVICE,
};

function volume(path: Path, v: schema.VolumeManifest): Volume {
  checkDnsLabel([...path, 'name'], v.name);
  const kinds = (['emptyDir', 'hostPath', 'secret', 'configMap', 'projected', 'downwardAPI'] as const).filter((k) => v[k] !== undefined);
  if (kinds.length !== 1)
    fail(path, kinds.length === 0 ? 'needs a source: emptyDir, hostPath, secret, configMap, projected or downwardAPI' : `has ${kinds.join(' and ')}: give exactly one source`);
  let source: Volume['source'];
  if (v.emptyDir) {
    source = {
      $case: 'emptyDir',
      value: {
        medium: v.emptyDir.medium === 'Memory' ? StorageMedium.STORAGE_MEDIUM_MEMORY : StorageMedium.STORAGE_MEDIUM_UNSPECIFIED,
        sizeLimitBytes: v.emptyDir.sizeLimit === undefined ? undefined : quantity([...path, 'emptyDir', 'sizeLimit'], parseBytes, v.emptyDir.sizeLimit),
      },
    };
  } else if (v.hostPath) {
    if (!v.hostPath.path.startsWith('/')) fail([...path, 'hostPath', 'path'], `"${v.hostPath.path}" must be an absolute path`);
    source = { $case: 'hostPath', value: { path: v.hostPath.path, type: HOST_PATH_TYPES[v.hostPath.type ?? '']! } };
  } else if (v.secret) {
    const sp = [...path, 'secret'];
    if (!v.secret.secretName) fail([...sp, 'secretName'], 'is required');
    checkMode([...sp, 'defaultMode'], v.secret.defaultMode);
    source = {
      $case: 'secret',
      value: { secretName: v.secret.secretName, items: items([...sp, 'items'], v.secret.items), defaultMode: v.secret.defaultMode, optional: v.secret.optional ?? false },
    };
  } else if (v.configMap) {
    const cp = [...path, 'configMap'];
    if (!v.configMap.name) fail([...cp, 'name'], 'is required');
    checkMode([...cp, 'defaultMode'], v.configMap.defaultMode);
    source = {
      $case: 'configMap',
      value: { name: v.configMap.name, items: items([...cp, 'items'], v.configMap.items), defaultMode: v.configMap.defaultMode, optional: v.configMap.optional ?? false },
    };
  } else if (v.downwardAPI) {
    const dp = [...path, 'downwardAPI'];
    checkMode([...dp, 'defaultMode'], v.downwardAPI.defaultMode);
    source = { $case: 'downwardApi', value: { items: downwardItems([...dp, 'items'], v.downwardAPI.items), defaultMode: v.downwardAPI.defaultMode } };
  } else {
    const pp = [...path, 'projected'];
    const pr = v.projected!;
    checkMode([...pp, 'defaultMode'], pr.defaultMode);
    const sources = pr.sources.map((s, i) => {
      const sp = [...pp, 'sources', i];
      const set = (['secret', 'configMap', 'downwardAPI', 'serviceAccountToken'] as const).filter((k) => s[k] !== undefined);
      if (set.length !== 1) fail(sp, 'needs exactly one of secret, configMap, downwardAPI, serviceAccountToken');
      if (s.secret) {
        if (!s.secret.name) fail([...sp, 'secret', 'name'], 'is required');
        return {
          source: {
            $case: 'secret' as const,
            value: { secretName: s.secret.name, items: items([...sp, 'secret', 'items'], s.secret.items), defaultMode: undefined, optional: s.secret.optional ?? false },
          },
        };
      }
      if (s.configMap) {
        if (!s.configMap.name) fail([...sp, 'configMap', 'name'], 'is required');
        return {
          source: {
            $case: 'configMap' as const,
            value: { name: s.configMap.name, items: items([...sp, 'configMap', 'items'], s.configMap.items), defaultMode: undefined, optional: s.configMap.optional ?? false },
          },
        };
      }
      if (s.downwardAPI) {
        return { source: { $case: 'downwardApi' as const, value: { items: downwardItems([...sp, 'downwardAPI', 'items'], s.downwardAPI.items), defaultMode: undefined } } };
      }
      const t = s.serviceAccountToken!;
      checkRelativePath([...sp, 'serviceAccountToken', 'path'], t.path);
      if (t.expirationSeconds !== undefined && t.expirationSeconds < 600)
        fail([...sp, 'serviceAccountToken', 'expirationSeconds'], `${t.expirationSeconds} is below the minimum of 600 seconds`);
      return { source: { $case: 'serviceAccountToken' as const, value: { audience: t.audience ?? '', expirationSeconds: t.expirationSeconds, path: t.path } } };
    });
    source = { $case: 'projected', value: { sources, defaultMode: pr.defaultMode } };
  }
  return { name: v.name, source };
}

function zodFail(err: z.ZodError, prefix: Path = []): never {
  const issue = err.issues[0]!;
  const path = [...prefix, ...(issue.path as (string | number)[])];
  let problem = issue.message;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    throw new ManifestError(fieldPath([...path, key]), `unknown field "${key}"`);
  }
  if (issue.code === 'invalid_type') problem = issue.input === undefined ? 'is required' : `expected ${issue.expected}, got ${describe(issue.input)}`;
  if (issue.code === 'invalid_value') problem = `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  throw new ManifestError(fieldPath(path), problem);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

/** A Pod manifest object (already parsed from YAML/JSON) → the proto Pod. */
export function convertPod(obj: unknown, defaults: { namespace?: string } = {}): Pod {
  const r = schema.pod.safeParse(obj);
  if (!r.success) zodFail(r.error);
  const m = r.data;
  const name = m.metadata.name;
  if (!name) fail(['metadata', 'name'], 'is required');
  checkDnsSubdomain(['metadata', 'name'], name);
  const namespace = m.metadata.namespace ?? defaults.namespace ?? 'default';
  checkDnsLabel(['metadata', 'namespace'], namespace);
  const s = m.spec;
  if (s.containers.length === 0) fail(['spec', 'containers'], 'must have at least one container');
  refuseUnsupported(s);

  const volumeNames = new Set<string>();
  const volumes = (s.volumes ?? []).map((v, i) => {
    const vol = volume(['spec', 'volumes', i], v);
    if (volumeNames.has(v.name)) fail(['spec', 'volumes', i, 'name'], `duplicate volume name "${v.name}"`);
    volumeNames.add(v.name);
    return vol;
  });
  const osName = s.os?.name ?? '';
  // As the API server: Windows pods are valid Kubernetes, but nothing a cell can run.
  if (osName === 'windows') fail(['spec', 'os', 'name'], '"windows" is not supported: a cell runs Linux containers only');
  if (s.os && osName !== 'linux') fail(['spec', 'os', 'name'], `unsupported value "${osName}": supported values: "linux", "windows"`);
  if (s.terminationGracePeriodSeconds !== undefined && s.terminationGracePeriodSeconds < 0) fail(['spec', 'terminationGracePeriodSeconds'], 'must be 0 or more');
  const podCtx: PodContext = { volumeNames, graceSeconds: s.terminationGracePeriodSeconds ?? 30, osName };
  const unitNames = new Set<string>();
  const unit = (kind: 'initContainers' | 'containers') => (c: schema.ContainerManifest, i: number) => {
    const out = container(['spec', kind, i], c, podCtx, kind === 'initContainers');
    if (unitNames.has(c.name)) fail(['spec', kind, i, 'name'], `duplicate container name "${c.name}"`);
    unitNames.add(c.name);
    return out;
  };
  const initContainers = (s.initContainers ?? []).map(unit('initContainers'));
  const containers = s.containers.map(unit('containers'));
  const ephemeralContainers = (s.ephemeralContainers ?? []).map((c, i) => {
    const path = ['spec', 'ephemeralContainers', i];
    // As the API server's validation: a debugging container serves nothing and is sized by nobody.
    for (const f of ['ports', 'livenessProbe', 'readinessProbe', 'startupProbe', 'lifecycle', 'resources', 'restartPolicy'] as const) {
      const v = c[f];
      if (v !== undefined && !(Array.isArray(v) && v.length === 0) && !(f === 'resources' && Object.keys(v).length === 0))
        fail([...path, f], 'may not be set for ephemeral containers');
    }
    const { targetContainerName, ...rest } = c;
    const out = container(path, rest, podCtx, false);
    if (unitNames.has(c.name)) fail([...path, 'name'], `duplicate container name "${c.name}"`);
    unitNames.add(c.name);
    if (targetContainerName && !s.containers.some((x) => x.name === targetContainerName) && !(s.initContainers ?? []).some((x) => x.name === targetContainerName))
      fail([...path, 'targetContainerName'], `"${targetContainerName}" names no container of the pod`);
    return { ...out, targetContainerName: targetContainerName ?? '' };
  });

  hostNamespaces(s, initContainers, containers);
  if (s.activeDeadlineSeconds !== undefined && s.activeDeadlineSeconds < 1) fail(['spec', 'activeDeadlineSeconds'], 'must be 1 or more');
  if (s.hostname) checkDnsLabel(['spec', 'hostname'], s.hostname);
  if (s.subdomain) checkDnsLabel(['spec', 'subdomain'], s.subdomain);
  const psc = s.securityContext;

  return {
    metadata: {
      name,
      namespace,
      uid: m.metadata.uid ?? '',
      labels: m.metadata.labels ?? {},
      annotations: m.metadata.annotations ?? {},
      creationTimestamp: m.metadata.creationTimestamp ? new Date(m.metadata.creationTimestamp) : undefined,
    },
    spec: {
      initContainers,
      containers,
      ephemeralContainers,
      volumes,
      restartPolicy: {
        Always: RestartPolicy.RESTART_POLICY_ALWAYS,
        OnFailure: RestartPolicy.RESTART_POLICY_ON_FAILURE,
        Never: RestartPolicy.RESTART_POLICY_NEVER,
      }[s.restartPolicy ?? 'Always'],
      terminationGracePeriodSeconds: s.terminationGracePeriodSeconds,
      activeDeadlineSeconds: s.activeDeadlineSeconds,
      hostname: s.hostname ?? '',
      subdomain: s.subdomain ?? '',
      dnsConfig: s.dnsConfig
        ? {
            nameservers: s.dnsConfig.nameservers ?? [],
            searches: s.dnsConfig.searches ?? [],
            options: (s.dnsConfig.options ?? []).map((o) => ({ name: o.name, value: o.value })),
          }
        : undefined,
      hostAliases: (s.hostAliases ?? []).map((h) => ({ ip: h.ip, hostnames: h.hostnames ?? [] })),
      securityContext: psc
        ? {
            runAsUser: psc.runAsUser,
            runAsGroup: psc.runAsGroup,
            runAsNonRoot: psc.runAsNonRoot,
            fsGroup: psc.fsGroup,
            supplementalGroups: psc.supplementalGroups ?? [],
            supplementalGroupsPolicy: psc.supplementalGroupsPolicy ?? '',
            sysctls: psc.sysctls ?? [],
            seccompProfile: seccomp(psc.seccompProfile, ['spec', 'securityContext', 'seccompProfile']),
          }
        : undefined,
      imagePullSecrets: (s.imagePullSecrets ?? []).map((x) => x.name),
      serviceAccountName: s.serviceAccountName ?? s.serviceAccount ?? '',
      shareProcessNamespace: s.shareProcessNamespace ?? false,
      dnsPolicy: s.dnsPolicy ?? 'ClusterFirst',
      nodeSelector: s.nodeSelector ?? {},
      hostNetwork: s.hostNetwork ?? false,
      hostPid: false,
      hostIpc: false,
      osName,
      requiredNodeAffinity: (s.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? []).map((t) => ({
        matchExpressions: (t.matchExpressions ?? []).map((e) => ({ key: e.key, operator: e.operator, values: e.values ?? [] })),
      })),
    },
  };
}

/**
 * hostNetwork, hostPID, hostIPC and the hostPorts: a cell's pod already runs in the cell's network
 * namespace, so hostNetwork is supported (its hostPorts are its containerPorts, as the API
 * server defaults and requires them); sharing the cell's PID or IPC namespace would hand the pod
 * the agent's processes, so those are refused. Two ports may not claim one hostPort and protocol.
 */
function hostNamespaces(s: schema.PodManifest['spec'], initContainers: Container[], containers: Container[]): void {
  if (s.hostPID)
    fail(['spec', 'hostPID'], "is not supported on a cell: the pod would share the cell agent's PID namespace (shareProcessNamespace shares one among the pod's containers)");
  if (s.hostIPC) fail(['spec', 'hostIPC'], "is not supported on a cell: the pod would share the cell agent's IPC namespace");
  const claimed = new Map<string, { path: Path; hostIp: string }[]>();
  const check = (kind: 'initContainers' | 'containers', list: Container[]) =>
    list.forEach((c, i) =>
      c.ports.forEach((p, j) => {
        const path: Path = ['spec', kind, i, 'ports', j];
        if (s.hostNetwork) {
          if (p.hostPort !== 0 && p.hostPort !== p.containerPort) fail([...path, 'hostPort'], `${p.hostPort} must match containerPort ${p.containerPort} when hostNetwork is true`);
          p.hostPort = p.containerPort;
        }
        if (p.hostPort === 0) return;
        const proto = Protocol[p.protocol].replace('PROTOCOL_', '');
        const key = `${proto}/${p.hostPort}`;
        const other = (claimed.get(key) ?? []).find((o) => !o.hostIp || !p.hostIp || o.hostIp === p.hostIp);
        if (other) fail([...path, 'hostPort'], `${key} is already claimed by ${fieldPath([...other.path, 'hostPort'])}`);
        claimed.set(key, [...(claimed.get(key) ?? []), { path, hostIp: p.hostIp }]);
      }),
    );
  check('initContainers', initContainers);
  check('containers', containers);
}

function checkKeys(path: Path, keys: string[]): void {
  for (const k of keys) if (!CONFIG_KEY.test(k) || k.length > 253) fail([...path, k], `"${k}" is not a valid key: use letters, digits, '-', '_' and '.'`);
}

function base64(path: Path, v: string): Buffer {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v.replace(/\s+/g, '')) || v.replace(/\s+/g, '').length % 4 !== 0) fail(path, 'is not valid base64');
  return Buffer.from(v, 'base64');
}

export function convertSecret(obj: unknown): { name: string; namespace: string | undefined; data: SecretData } {
  const r = schema.secret.safeParse(obj);
  if (!r.success) zodFail(r.error);
  const m = r.data;
  if (!m.metadata.name) fail(['metadata', 'name'], 'is required');
  checkDnsSubdomain(['metadata', 'name'], m.metadata.name);
  checkKeys(['data'], Object.keys(m.data ?? {}));
  checkKeys(['stringData'], Object.keys(m.stringData ?? {}));
  const data: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(m.data ?? {})) data[k] = base64(['data', k], v);
  for (const [k, v] of Object.entries(m.stringData ?? {})) data[k] = Buffer.from(v, 'utf8');
  // Refused now, naming the field, rather than failing every pull of the pods that use it.
  if (isDockerConfigType(m.type)) parseDockerConfigSecret(m.metadata.name, m.type, data);
  return { name: m.metadata.name, namespace: m.metadata.namespace, data: { data, ...(m.type ? { type: m.type } : {}) } };
}

export function convertConfigMap(obj: unknown): { name: string; namespace: string | undefined; data: ConfigMapData } {
  const r = schema.configMap.safeParse(obj);
  if (!r.success) zodFail(r.error);
  const m = r.data;
  if (!m.metadata.name) fail(['metadata', 'name'], 'is required');
  checkDnsSubdomain(['metadata', 'name'], m.metadata.name);
  checkKeys(['data'], Object.keys(m.data ?? {}));
  checkKeys(['binaryData'], Object.keys(m.binaryData ?? {}));
  for (const k of Object.keys(m.binaryData ?? {})) if (m.data && k in m.data) fail(['binaryData', k], `key "${k}" is also in data`);
  const binaryData: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(m.binaryData ?? {})) binaryData[k] = base64(['binaryData', k], v);
  return { name: m.metadata.name, namespace: m.metadata.namespace, data: { data: m.data ?? {}, binaryData } };
}

/** Parses YAML (one or many `---` documents) or JSON into objects; empty documents are skipped. */
export function parseDocuments(text: string): unknown[] {
  // YAML 1.1, as Kubernetes reads manifests: `defaultMode: 0400` is octal there.
  const docs = parseAllDocuments(text, { prettyErrors: true, version: '1.1' });
  const list = Array.isArray(docs) ? docs : [docs];
  const out: unknown[] = [];
  list.forEach((d, i) => {
    if (d.errors.length > 0) {
      const e = d.errors[0]!;
      throw new ManifestError('', `not valid YAML or JSON: ${e.message.split('\n')[0]}`, i);
    }
    const v = d.toJS({ maxAliasCount: 100 }) as unknown;
    if (v === null || v === undefined) return;
    if (typeof v === 'object' && !Array.isArray(v) && ['List', 'PodList'].includes((v as { kind?: unknown }).kind as string)) {
      const itemsOf = (v as { items?: unknown }).items;
      if (!Array.isArray(itemsOf)) throw new ManifestError('items', 'a List needs items', i);
      out.push(...itemsOf);
    } else out.push(v);
  });
  return out;
}
