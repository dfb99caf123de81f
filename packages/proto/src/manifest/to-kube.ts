// cello.cell.v1 messages → Kubernetes v1 objects: the inverse of convert.ts, so what `cellctl get
// -o yaml` prints is a Pod that kubectl's tools read and that `cellctl apply -f -` takes back to
// the same pod. Defaults are printed as the API server prints them (protocol: TCP,
// restartPolicy: Always, imagePullPolicy) and quantities as quantities ("250m", "64Mi").
import {
  type Container,
  type EnvVar,
  ContainerRestartPolicy,
  type Handler,
  HostPathType,
  type Pod,
  type PodSpec,
  type PortRef,
  type Probe,
  Protocol,
  PullPolicy,
  type ResourceList,
  RestartPolicy,
  type SeccompProfile,
  SeccompProfileType,
  StorageMedium,
  TerminationMessagePolicy,
  type Volume,
} from '../cell.js';
import { formatBytes, formatCpuMillis } from '../quantity.js';

type Obj = Record<string, unknown>;

/** Drops undefined values, so an unset optional field is absent rather than `null` in YAML. */
function clean<T extends Obj>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

const nonEmpty = <T>(list: T[] | undefined): T[] | undefined => (list && list.length > 0 ? list : undefined);
const nonEmptyMap = (m: Record<string, string> | undefined): Record<string, string> | undefined => (m && Object.keys(m).length > 0 ? m : undefined);
const str = (s: string | undefined): string | undefined => (s ? s : undefined);

function resourceList(r: ResourceList | undefined): Record<string, string> | undefined {
  if (!r) return undefined;
  const out: Record<string, string> = {};
  if (r.cpuMillis !== undefined) out.cpu = formatCpuMillis(r.cpuMillis);
  if (r.memoryBytes !== undefined) out.memory = formatBytes(r.memoryBytes);
  if (r.ephemeralStorageBytes !== undefined) out['ephemeral-storage'] = formatBytes(r.ephemeralStorageBytes);
  for (const [k, v] of Object.entries(r.extended)) out[k] = String(v);
  return Object.keys(out).length ? out : undefined;
}

function port(p: PortRef | undefined): number | string | undefined {
  const v = p?.value;
  return v?.value;
}

function handler(h: Handler | undefined): Obj {
  const a = h?.action;
  if (!a) return {};
  switch (a.$case) {
    case 'exec':
      return { exec: { command: a.value.command } };
    case 'httpGet':
      return {
        httpGet: clean({
          path: a.value.path,
          port: port(a.value.port),
          host: str(a.value.host),
          scheme: a.value.scheme || 'HTTP',
          httpHeaders: nonEmpty(a.value.httpHeaders),
        }),
      };
    case 'tcpSocket':
      return { tcpSocket: clean({ port: port(a.value.port), host: str(a.value.host) }) };
    case 'grpc':
      return { grpc: clean({ port: a.value.port, service: str(a.value.service) }) };
    case 'sleep':
      return { sleep: { seconds: a.value.seconds } };
  }
}

function probe(p: Probe | undefined): Obj | undefined {
  if (!p) return undefined;
  // Only what was given: a default printed here would read back as a change of the pod's spec.
  return clean({
    ...handler(p.handler),
    initialDelaySeconds: p.initialDelaySeconds || undefined,
    timeoutSeconds: p.timeoutSeconds,
    periodSeconds: p.periodSeconds,
    successThreshold: p.successThreshold,
    failureThreshold: p.failureThreshold,
    terminationGracePeriodSeconds: p.terminationGracePeriodSeconds,
  });
}

const SECCOMP: Record<number, string> = {
  [SeccompProfileType.SECCOMP_PROFILE_TYPE_RUNTIME_DEFAULT]: 'RuntimeDefault',
  [SeccompProfileType.SECCOMP_PROFILE_TYPE_UNCONFINED]: 'Unconfined',
  [SeccompProfileType.SECCOMP_PROFILE_TYPE_LOCALHOST]: 'Localhost',
};

function seccomp(s: SeccompProfile | undefined): Obj | undefined {
  if (!s || !SECCOMP[s.type]) return undefined;
  return clean({ type: SECCOMP[s.type], localhostProfile: str(s.localhostProfile) });
}

function envVar(e: EnvVar): Obj {
  const src = e.valueFrom?.source;
  if (!src) return { name: e.name, value: e.value };
  let valueFrom: Obj;
  switch (src.$case) {
    case 'secretKeyRef':
    case 'configMapKeyRef':
      valueFrom = { [src.$case]: clean({ name: src.value.name, key: src.value.key, optional: src.value.optional || undefined }) };
      break;
    case 'fieldRef':
      valueFrom = { fieldRef: { apiVersion: 'v1', fieldPath: src.value.fieldPath } };
      break;
    case 'resourceFieldRef':
      valueFrom = { resourceFieldRef: clean({ containerName: str(src.value.containerName), resource: src.value.resource, divisor: str(src.value.divisor) }) };
      break;
  }
  return { name: e.name, valueFrom };
}

const PROTOCOL: Record<number, string> = {
  [Protocol.PROTOCOL_UNSPECIFIED]: 'TCP',
  [Protocol.PROTOCOL_TCP]: 'TCP',
  [Protocol.PROTOCOL_UDP]: 'UDP',
  [Protocol.PROTOCOL_SCTP]: 'SCTP',
};

const PULL: Record<number, string | undefined> = {
  [PullPolicy.PULL_POLICY_ALWAYS]: 'Always',
  [PullPolicy.PULL_POLICY_IF_NOT_PRESENT]: 'IfNotPresent',
  [PullPolicy.PULL_POLICY_NEVER]: 'Never',
};

function container(c: Container): Obj {
  const sc = c.securityContext;
  const lc = c.lifecycle;
  return clean({
    name: c.name,
    image: c.image,
    command: nonEmpty(c.command),
    args: nonEmpty(c.args),
    workingDir: str(c.workingDir),
    ports: nonEmpty(c.ports.map((p) => clean({ name: str(p.name), containerPort: p.containerPort, protocol: PROTOCOL[p.protocol] ?? 'TCP', hostPort: p.hostPort || undefined }))),
    env: nonEmpty(c.env.map(envVar)),
    envFrom: nonEmpty(
      c.envFrom.map((e) => {
        const s = e.source;
        const ref = s ? { [s.$case]: clean({ name: s.value.name, optional: s.value.optional || undefined }) } : {};
        return clean({ prefix: str(e.prefix), ...ref });
      }),
    ),
    resources: c.resources ? clean({ requests: resourceList(c.resources.requests), limits: resourceList(c.resources.limits) }) : {},
    volumeMounts: nonEmpty(
      c.volumeMounts.map((m) => clean({ name: m.name, mountPath: m.mountPath, readOnly: m.readOnly || undefined, subPath: str(m.subPath), subPathExpr: str(m.subPathExpr) })),
    ),
    livenessProbe: probe(c.livenessProbe),
    readinessProbe: probe(c.readinessProbe),
    startupProbe: probe(c.startupProbe),
    lifecycle: lc
      ? clean({ postStart: lc.postStart ? handler(lc.postStart) : undefined, preStop: lc.preStop ? handler(lc.preStop) : undefined, stopSignal: str(lc.stopSignal) })
      : undefined,
    restartPolicy: c.restartPolicy === ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS ? 'Always' : undefined,
    terminationMessagePath: c.terminationMessagePath || '/dev/termination-log',
    terminationMessagePolicy: c.terminationMessagePolicy === TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FALLBACK_TO_LOGS_ON_ERROR ? 'FallbackToLogsOnError' : 'File',
    imagePullPolicy: PULL[c.imagePullPolicy],
    securityContext: sc
      ? clean({
          runAsUser: sc.runAsUser,
          runAsGroup: sc.runAsGroup,
          runAsNonRoot: sc.runAsNonRoot,
          capabilities: sc.capabilities ? clean({ add: nonEmpty(sc.capabilities.add), drop: nonEmpty(sc.capabilities.drop) }) : undefined,
          readOnlyRootFilesystem: sc.readOnlyRootFilesystem,
          privileged: sc.privileged,
          allowPrivilegeEscalation: sc.allowPrivilegeEscalation,
          seccompProfile: seccomp(sc.seccompProfile),
          cri: sc.cri
            ? clean({
                maskedPaths: sc.cri.procPaths?.masked,
                readonlyPaths: sc.cri.procPaths?.readonly,
                runAsUsername: str(sc.cri.runAsUsername),
                supplementalGroups: nonEmpty(sc.cri.supplementalGroups),
                supplementalGroupsPolicy: str(sc.cri.supplementalGroupsPolicy),
              })
            : undefined,
        })
      : undefined,
    stdin: c.stdin || undefined,
    stdinOnce: c.stdinOnce || undefined,
    tty: c.tty || undefined,
  });
}

const HOST_PATH_TYPE: Record<number, string> = {
  [HostPathType.HOST_PATH_TYPE_UNSPECIFIED]: '',
  [HostPathType.HOST_PATH_TYPE_DIRECTORY_OR_CREATE]: 'DirectoryOrCreate',
  [HostPathType.HOST_PATH_TYPE_DIRECTORY]: 'Directory',
  [HostPathType.HOST_PATH_TYPE_FILE_OR_CREATE]: 'FileOrCreate',
  [HostPathType.HOST_PATH_TYPE_FILE]: 'File',
  [HostPathType.HOST_PATH_TYPE_SOCKET]: 'Socket',
  [HostPathType.HOST_PATH_TYPE_CHAR_DEVICE]: 'CharDevice',
  [HostPathType.HOST_PATH_TYPE_BLOCK_DEVICE]: 'BlockDevice',
};

const keyToPath = (items: { key: string; path: string; mode?: number | undefined }[]) => nonEmpty(items.map((i) => clean({ key: i.key, path: i.path, mode: i.mode })));

type DownwardItems = NonNullable<Extract<Volume['source'], { $case: 'downwardApi' }>>['value']['items'];
const downwardItems = (items: DownwardItems) =>
  nonEmpty(
    items.map((i) =>
      clean({
        path: i.path,
        fieldRef: i.fieldRef ? { apiVersion: 'v1', fieldPath: i.fieldRef.fieldPath } : undefined,
        resourceFieldRef: i.resourceFieldRef
          ? clean({ containerName: str(i.resourceFieldRef.containerName), resource: i.resourceFieldRef.resource, divisor: str(i.resourceFieldRef.divisor) })
          : undefined,
        mode: i.mode,
      }),
    ),
  );

function volume(v: Volume): Obj {
  const s = v.source;
  if (!s) return { name: v.name };
  switch (s.$case) {
    case 'emptyDir':
      return {
        name: v.name,
        emptyDir: clean({
          medium: s.value.medium === StorageMedium.STORAGE_MEDIUM_MEMORY ? 'Memory' : undefined,
          sizeLimit: s.value.sizeLimitBytes !== undefined ? formatBytes(s.value.sizeLimitBytes) : undefined,
        }),
      };
    case 'hostPath':
      return { name: v.name, hostPath: { path: s.value.path, type: HOST_PATH_TYPE[s.value.type] ?? '' } };
    case 'secret':
      return {
        name: v.name,
        secret: clean({ secretName: s.value.secretName, items: keyToPath(s.value.items), defaultMode: s.value.defaultMode, optional: s.value.optional || undefined }),
      };
    case 'configMap':
      return {
        name: v.name,
        configMap: clean({ name: s.value.name, items: keyToPath(s.value.items), defaultMode: s.value.defaultMode, optional: s.value.optional || undefined }),
      };
    case 'downwardApi':
      return { name: v.name, downwardAPI: clean({ items: downwardItems(s.value.items), defaultMode: s.value.defaultMode }) };
    case 'projected':
      return {
        name: v.name,
        projected: clean({
          sources: s.value.sources.map((p) => {
            const ps = p.source;
            if (!ps) return {};
            switch (ps.$case) {
              case 'secret':
                return { secret: clean({ name: ps.value.secretName, items: keyToPath(ps.value.items), optional: ps.value.optional || undefined }) };
              case 'configMap':
                return { configMap: clean({ name: ps.value.name, items: keyToPath(ps.value.items), optional: ps.value.optional || undefined }) };
              case 'downwardApi':
                return { downwardAPI: clean({ items: downwardItems(ps.value.items) }) };
              case 'serviceAccountToken':
                return { serviceAccountToken: clean({ audience: str(ps.value.audience), expirationSeconds: ps.value.expirationSeconds, path: ps.value.path }) };
            }
          }),
          defaultMode: s.value.defaultMode,
        }),
      };
  }
}

const RESTART: Record<number, string> = {
  [RestartPolicy.RESTART_POLICY_UNSPECIFIED]: 'Always',
  [RestartPolicy.RESTART_POLICY_ALWAYS]: 'Always',
  [RestartPolicy.RESTART_POLICY_ON_FAILURE]: 'OnFailure',
  [RestartPolicy.RESTART_POLICY_NEVER]: 'Never',
};

/** A v1 PodSpec. `nodeName` is the caller's (the virtual node's name, when there is one). */
export function kubePodSpec(s: PodSpec): Obj {
  const psc = s.securityContext;
  const dns = s.dnsConfig;
  return clean({
    initContainers: nonEmpty(s.initContainers.map(container)),
    containers: s.containers.map(container),
    ephemeralContainers: nonEmpty(s.ephemeralContainers.map((c) => ({ ...container(c), ...(c.targetContainerName ? { targetContainerName: c.targetContainerName } : {}) }))),
    volumes: nonEmpty(s.volumes.map(volume)),
    restartPolicy: RESTART[s.restartPolicy] ?? 'Always',
    terminationGracePeriodSeconds: s.terminationGracePeriodSeconds,
    activeDeadlineSeconds: s.activeDeadlineSeconds,
    dnsPolicy: s.dnsPolicy || 'ClusterFirst',
    dnsConfig: dns ? clean({ nameservers: nonEmpty(dns.nameservers), searches: nonEmpty(dns.searches), options: nonEmpty(dns.options.map((o) => clean({ ...o }))) }) : undefined,
    hostname: str(s.hostname),
    subdomain: str(s.subdomain),
    hostAliases: nonEmpty(s.hostAliases.map((h) => clean({ ip: h.ip, hostnames: nonEmpty(h.hostnames) }))),
    serviceAccountName: str(s.serviceAccountName),
    shareProcessNamespace: s.shareProcessNamespace || undefined,
    os: s.osName ? { name: s.osName } : undefined,
    imagePullSecrets: nonEmpty(s.imagePullSecrets.map((name) => ({ name }))),
    nodeSelector: nonEmptyMap(s.nodeSelector),
    affinity:
      s.requiredNodeAffinity.length > 0
        ? {
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: {
                nodeSelectorTerms: s.requiredNodeAffinity.map((t) => ({
                  matchExpressions: t.matchExpressions.map((e) => clean({ key: e.key, operator: e.operator, values: nonEmpty(e.values) })),
                })),
              },
            },
          }
        : undefined,
    securityContext: psc
      ? clean({
          runAsUser: psc.runAsUser,
          runAsGroup: psc.runAsGroup,
          runAsNonRoot: psc.runAsNonRoot,
          fsGroup: psc.fsGroup,
          supplementalGroups: nonEmpty(psc.supplementalGroups),
          supplementalGroupsPolicy: psc.supplementalGroupsPolicy || undefined,
          sysctls: nonEmpty(psc.sysctls),
          seccompProfile: seccomp(psc.seccompProfile),
        })
      : undefined,
  });
}

/** A v1 Pod (metadata and spec) from the proto Pod; the caller adds status. */
export function kubePod(p: Pod): Obj {
  const m = p.metadata;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: clean({
      name: m?.name ?? '',
      namespace: m?.namespace || 'default',
      uid: str(m?.uid),
      labels: nonEmptyMap(m?.labels),
      annotations: nonEmptyMap(m?.annotations),
      creationTimestamp: m?.creationTimestamp ? new Date(m.creationTimestamp).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined,
    }),
    spec: p.spec ? kubePodSpec(p.spec) : {},
  };
}
