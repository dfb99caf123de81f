// The subset of Kubernetes' v1 Pod (and Secret, ConfigMap) that Cello runs, as zod schemas.
// Objects are strict so a misspelt field is an error naming it. Kubernetes fields that mean
// nothing once a pod is bound (scheduling hints, object bookkeeping) are accepted and ignored,
// each with the reason beside it; fields a cell cannot honour are typed here and refused, with
// the field named, in unsupported.ts.
import { z } from 'zod';

const ignored = z.unknown().optional();
const str = z.string();
const int = z.number().int();
const intOrString = z.union([int, z.string()]);
const quantity = z.union([z.string(), z.number()]);
const stringMap = z.record(z.string(), z.string());

export const objectMeta = z.strictObject({
  name: str.optional(),
  generateName: str.optional(),
  namespace: str.optional(),
  uid: str.optional(),
  labels: stringMap.optional(),
  annotations: stringMap.optional(),
  // YAML 1.1 (as Kubernetes reads manifests) makes an unquoted timestamp a date.
  creationTimestamp: z.union([z.string(), z.date(), z.null()]).optional(),
  // The API server's bookkeeping: nothing a running pod does depends on it.
  resourceVersion: ignored,
  generation: ignored,
  ownerReferences: ignored,
  finalizers: ignored,
  managedFields: ignored,
  deletionTimestamp: ignored,
  deletionGracePeriodSeconds: ignored,
  selfLink: ignored,
});

const keySelector = z.strictObject({ name: str, key: str, optional: z.boolean().optional() });
const fieldRef = z.strictObject({ fieldPath: str, apiVersion: str.optional() });
const resourceFieldRef = z.strictObject({ containerName: str.optional(), resource: str, divisor: quantity.optional() });

const envVar = z.strictObject({
  name: str,
  value: str.optional(),
  valueFrom: z
    .strictObject({
      secretKeyRef: keySelector.optional(),
      configMapKeyRef: keySelector.optional(),
      fieldRef: fieldRef.optional(),
      resourceFieldRef: resourceFieldRef.optional(),
    })
    .optional(),
});

const nameRef = z.strictObject({ name: str, optional: z.boolean().optional() });
const envFrom = z.strictObject({ prefix: str.optional(), configMapRef: nameRef.optional(), secretRef: nameRef.optional() });

const containerPort = z.strictObject({
  name: str.optional(),
  containerPort: int,
  protocol: z.enum(['TCP', 'UDP', 'SCTP']).optional(),
  hostPort: int.optional(),
  hostIP: str.optional(),
});

const volumeMount = z.strictObject({
  name: str,
  mountPath: str,
  readOnly: z.boolean().optional(),
  subPath: str.optional(),
  subPathExpr: str.optional(),
  // None only: a cell has no host mounts to propagate (unsupported.ts refuses the others).
  mountPropagation: z.enum(['None', 'HostToContainer', 'Bidirectional']).optional(),
  // Checked in unsupported.ts: Enabled only where read-only is already recursive on a cell.
  recursiveReadOnly: z.enum(['Disabled', 'IfPossible', 'Enabled']).optional(),
});

const resourceList = z.record(z.string(), quantity);
// claims name the pod's resourceClaims, which unsupported.ts refuses.
const resources = z.strictObject({ requests: resourceList.optional(), limits: resourceList.optional(), claims: z.array(z.looseObject({ name: str })).optional() });

const httpGet = z.strictObject({
  path: str.optional(),
  port: intOrString,
  host: str.optional(),
  scheme: z.enum(['HTTP', 'HTTPS']).optional(),
  httpHeaders: z.array(z.strictObject({ name: str, value: str })).optional(),
});
const tcpSocket = z.strictObject({ port: intOrString, host: str.optional() });
const execAction = z.strictObject({ command: z.array(str) });
const grpcAction = z.strictObject({ port: int, service: str.optional() });

const handlerFields = {
  exec: execAction.optional(),
  httpGet: httpGet.optional(),
  tcpSocket: tcpSocket.optional(),
  grpc: grpcAction.optional(),
};

const probe = z.strictObject({
  ...handlerFields,
  initialDelaySeconds: int.optional(),
  timeoutSeconds: int.optional(),
  periodSeconds: int.optional(),
  successThreshold: int.optional(),
  failureThreshold: int.optional(),
  terminationGracePeriodSeconds: int.optional(),
});

const lifecycleHandler = z.strictObject({ ...handlerFields, sleep: z.strictObject({ seconds: int }).optional() });
const lifecycle = z.strictObject({ postStart: lifecycleHandler.optional(), preStop: lifecycleHandler.optional(), stopSignal: str.optional() });

const seccompProfile = z.strictObject({
  type: z.enum(['RuntimeDefault', 'Unconfined', 'Localhost']),
  localhostProfile: str.optional(),
});

// As a kubelet on a node without SELinux: the labels are not applied (the cell's kernel
// enforces no SELinux policy), which is what runc does there.
const seLinuxOptions = z.strictObject({ user: str.optional(), role: str.optional(), type: str.optional(), level: str.optional() });
// Only Unconfined runs: a cell loads no AppArmor profiles (unsupported.ts refuses the others).
const appArmorProfile = z.strictObject({ type: z.enum(['RuntimeDefault', 'Unconfined', 'Localhost']), localhostProfile: str.optional() });

// cello-cri's fields from the CRI's container security context that the Kubernetes API has no
// name for. The API server prunes fields it does not know, so only a manifest given to the
// controller's API (cello-cri's, cellctl's) can carry it, never a virtual node's pod.
const criSecurityContext = z.strictObject({
  maskedPaths: z.array(str).optional(),
  readonlyPaths: z.array(str).optional(),
  runAsUsername: str.optional(),
  supplementalGroups: z.array(int).optional(),
  supplementalGroupsPolicy: z.enum(['Merge', 'Strict']).optional(),
});

const securityContext = z.strictObject({
  runAsUser: int.optional(),
  runAsGroup: int.optional(),
  runAsNonRoot: z.boolean().optional(),
  capabilities: z.strictObject({ add: z.array(str).optional(), drop: z.array(str).optional() }).optional(),
  readOnlyRootFilesystem: z.boolean().optional(),
  privileged: z.boolean().optional(),
  allowPrivilegeEscalation: z.boolean().optional(),
  seccompProfile: seccompProfile.optional(),
  procMount: z.enum(['Default', 'Unmasked']).optional(),
  seLinuxOptions: seLinuxOptions.optional(),
  appArmorProfile: appArmorProfile.optional(),
  // Windows only: a Linux kubelet ignores it too (the API server refuses it for os: linux).
  windowsOptions: ignored,
  cri: criSecurityContext.optional(),
});

export const container = z.strictObject({
  name: str,
  image: str.optional(),
  command: z.array(str).optional(),
  args: z.array(str).optional(),
  env: z.array(envVar).optional(),
  envFrom: z.array(envFrom).optional(),
  workingDir: str.optional(),
  ports: z.array(containerPort).optional(),
  volumeMounts: z.array(volumeMount).optional(),
  resources: resources.optional(),
  livenessProbe: probe.optional(),
  readinessProbe: probe.optional(),
  startupProbe: probe.optional(),
  lifecycle: lifecycle.optional(),
  securityContext: securityContext.optional(),
  stdin: z.boolean().optional(),
  stdinOnce: z.boolean().optional(),
  tty: z.boolean().optional(),
  terminationMessagePath: str.optional(),
  terminationMessagePolicy: z.enum(['File', 'FallbackToLogsOnError']).optional(),
  imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).optional(),
  // Only `Always`, only on init containers (a sidecar); checked in convert.ts.
  restartPolicy: str.optional(),
  // Only governs in-place resizes; on a cell every resource change restarts the container
  // (docs/kubernetes.md), whatever the policy says.
  resizePolicy: z.array(z.strictObject({ resourceName: str, restartPolicy: z.enum(['NotRequired', 'RestartContainer']) })).optional(),
  // Raw block devices of persistent volumes: a cell has none (unsupported.ts refuses them).
  volumeDevices: z.array(z.strictObject({ name: str, devicePath: str })).optional(),
});

const keyToPath = z.strictObject({ key: str, path: str, mode: int.optional() });
const secretSource = z.strictObject({
  secretName: str.optional(),
  items: z.array(keyToPath).optional(),
  defaultMode: int.optional(),
  optional: z.boolean().optional(),
});
const configMapSource = z.strictObject({
  name: str.optional(),
  items: z.array(keyToPath).optional(),
  defaultMode: int.optional(),
  optional: z.boolean().optional(),
});
const downwardApiFile = z.strictObject({
  path: str,
  fieldRef: fieldRef.optional(),
  resourceFieldRef: resourceFieldRef.optional(),
  mode: int.optional(),
});
const downwardApiSource = z.strictObject({ items: z.array(downwardApiFile).optional(), defaultMode: int.optional() });
// In projected volumes a secret is named by `name`, not `secretName`.
const projectedSecret = z.strictObject({ name: str.optional(), items: z.array(keyToPath).optional(), optional: z.boolean().optional() });
const projectedConfigMap = projectedSecret;

export const volume = z.strictObject({
  name: str,
  emptyDir: z.strictObject({ medium: z.enum(['', 'Memory']).optional(), sizeLimit: quantity.optional() }).optional(),
  hostPath: z
    .strictObject({
      path: str,
      type: z.enum(['', 'DirectoryOrCreate', 'Directory', 'FileOrCreate', 'File', 'Socket', 'CharDevice', 'BlockDevice']).optional(),
    })
    .optional(),
  secret: secretSource.optional(),
  configMap: configMapSource.optional(),
  projected: z
    .strictObject({
      sources: z.array(
        z.strictObject({
          secret: projectedSecret.optional(),
          configMap: projectedConfigMap.optional(),
          downwardAPI: z.strictObject({ items: z.array(downwardApiFile).optional() }).optional(),
          serviceAccountToken: z.strictObject({ audience: str.optional(), expirationSeconds: int.optional(), path: str }).optional(),
          // Refused (unsupported.ts): ClusterTrustBundles are not read by the virtual node.
          clusterTrustBundle: z.looseObject({ path: str }).optional(),
        }),
      ),
      defaultMode: int.optional(),
    })
    .optional(),
  downwardAPI: downwardApiSource.optional(),
});

const podSecurityContext = z.strictObject({
  runAsUser: int.optional(),
  runAsGroup: int.optional(),
  runAsNonRoot: z.boolean().optional(),
  fsGroup: int.optional(),
  supplementalGroups: z.array(int).optional(),
  sysctls: z.array(z.strictObject({ name: str, value: str })).optional(),
  seccompProfile: seccompProfile.optional(),
  // A cell's volumes are made for the pod: their ownership is set once, either way (docs/kubernetes.md).
  fsGroupChangePolicy: z.enum(['OnRootMismatch', 'Always']).optional(),
  // Strict: the pod's groups only, not those the image's /etc/group gives the user.
  supplementalGroupsPolicy: z.enum(['Merge', 'Strict']).optional(),
  seLinuxOptions: seLinuxOptions.optional(),
  appArmorProfile: appArmorProfile.optional(),
  // Windows only, as above.
  windowsOptions: ignored,
  // Like seLinuxOptions: nothing to relabel on a kernel that enforces no SELinux policy.
  seLinuxChangePolicy: z.enum(['MountOption', 'Recursive']).optional(),
});

export const podSpec = z.strictObject({
  initContainers: z.array(container).optional(),
  containers: z.array(container),
  volumes: z.array(volume).optional(),
  restartPolicy: z.enum(['Always', 'OnFailure', 'Never']).optional(),
  terminationGracePeriodSeconds: int.optional(),
  activeDeadlineSeconds: int.optional(),
  hostname: str.optional(),
  subdomain: str.optional(),
  dnsPolicy: z.enum(['ClusterFirst', 'ClusterFirstWithHostNet', 'Default', 'None']).optional(),
  dnsConfig: z
    .strictObject({
      nameservers: z.array(str).optional(),
      searches: z.array(str).optional(),
      options: z.array(z.strictObject({ name: str, value: str.optional() })).optional(),
    })
    .optional(),
  hostAliases: z.array(z.strictObject({ ip: str, hostnames: z.array(str).optional() })).optional(),
  securityContext: podSecurityContext.optional(),
  imagePullSecrets: z.array(z.strictObject({ name: str })).optional(),
  serviceAccountName: str.optional(),
  serviceAccount: str.optional(),
  shareProcessNamespace: z.boolean().optional(),
  nodeSelector: stringMap.optional(),
  // Scheduling: done by the time a pod reaches a cell (the pod is bound to the virtual node,
  // which tolerates what it was scheduled with), so nothing is left to honour.
  nodeName: ignored,
  tolerations: ignored,
  // Only required node affinity means something to a cell (its architecture); the rest is the
  // kube-scheduler's.
  affinity: z
    .looseObject({
      nodeAffinity: z
        .looseObject({
          requiredDuringSchedulingIgnoredDuringExecution: z
            .strictObject({
              nodeSelectorTerms: z.array(
                z.strictObject({
                  matchExpressions: z
                    .array(z.strictObject({ key: str, operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist', 'Gt', 'Lt']), values: z.array(str).optional() }))
                    .optional(),
                  matchFields: ignored,
                }),
              ),
            })
            .optional(),
        })
        .optional(),
    })
    .optional(),
  // The scheduler's and its preemption's inputs, all spent once the pod is bound.
  schedulerName: ignored,
  priority: ignored,
  priorityClassName: ignored,
  preemptionPolicy: ignored,
  topologySpreadConstraints: ignored,
  // Read by the virtual node, which writes the service-link env (k8s/node/service-env.ts).
  enableServiceLinks: z.boolean().optional(),
  // Honoured by the API server's ServiceAccount admission, which adds the token volume only when
  // neither the pod nor its ServiceAccount says false; the virtual node mounts what the pod has.
  automountServiceAccountToken: z.boolean().optional(),
  // Refused in unsupported.ts: a cell has one runtime, and is sized from the containers.
  runtimeClassName: str.optional(),
  overhead: resourceList.optional(),
  // Read by the virtual node: Ready also waits for each gate's condition (k8s/node/status.ts).
  readinessGates: z.array(z.strictObject({ conditionType: str })).optional(),
  hostNetwork: z.boolean().optional(),
  hostPID: z.boolean().optional(),
  hostIPC: z.boolean().optional(),
  // false (a user namespace) and true are refused in unsupported.ts.
  hostUsers: z.boolean().optional(),
  setHostnameAsFQDN: z.boolean().optional(),
  os: z.strictObject({ name: str }).optional(),
  // kubectl debug's (the /ephemeralcontainers subresource): run on the cell once, never restarted.
  ephemeralContainers: z.array(container.extend({ targetContainerName: str.optional() })).optional(),
  // Refused in unsupported.ts: no dynamic resource allocation on a cell.
  resourceClaims: z.array(z.looseObject({ name: str })).optional(),
  // Gates the scheduler; a bound pod has none left.
  schedulingGates: ignored,
  // Pod-level resources: refused in unsupported.ts (cells are sized from container resources).
  resources: z.looseObject({}).optional(),
});

export const pod = z.strictObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('Pod'),
  metadata: objectMeta,
  spec: podSpec,
  // Written by the node, never read from a manifest.
  status: ignored,
});

export const secret = z.strictObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('Secret'),
  metadata: objectMeta,
  type: str.optional(),
  data: stringMap.optional(),
  stringData: stringMap.optional(),
  immutable: z.boolean().optional(),
});

export const configMap = z.strictObject({
  apiVersion: z.literal('v1'),
  kind: z.literal('ConfigMap'),
  metadata: objectMeta,
  data: stringMap.optional(),
  binaryData: stringMap.optional(),
  immutable: z.boolean().optional(),
});

export type PodManifest = z.infer<typeof pod>;
export type ContainerManifest = z.infer<typeof container>;
export type VolumeManifest = z.infer<typeof volume>;
export type SecretManifest = z.infer<typeof secret>;
export type ConfigMapManifest = z.infer<typeof configMap>;
export type ProbeManifest = z.infer<typeof probe>;
export type HandlerManifest = z.infer<typeof lifecycleHandler>;
export type EnvVarManifest = z.infer<typeof envVar>;
export type DownwardApiFileManifest = z.infer<typeof downwardApiFile>;
