// The `kubernetes:` section of the controller's configuration: run the virtual node.
import { readFileSync } from 'node:fs';
import { networkInterfaces, hostname } from 'node:os';
import { z } from 'zod';

const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected HOST:PORT');
const dnsName = z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, 'expected a DNS name (lowercase letters, digits, -, .)');
const quantity = z.string().regex(/^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$/, 'expected a Kubernetes quantity such as 64, 500m, 256Gi');

export const kubernetesConfigSchema = z.strictObject({
  enabled: z.boolean().default(false),
  /** Name of the Node object. */
  nodeName: dnsName.default('cello'),
  /** kubeconfig file; unset: the in-cluster service account. */
  kubeconfig: z.string().min(1).optional(),
  /** Address the API server reaches the kubelet API at; default: $POD_IP, else the first non-loopback IPv4. */
  internalIP: z.string().min(1).optional(),
  kubelet: z.strictObject({
    listen: hostPort.default('0.0.0.0:10250'),
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** CA of the API server's kubelet client certificate (its --kubelet-client-certificate). */
    clientCAFile: z.string().min(1),
    /** Client certificate CNs allowed, on top of the SubjectAccessReview every caller gets; empty: no extra restriction. */
    allowedCommonNames: z.array(z.string().min(1)).default([]),
  }),
  /** Pods must tolerate this taint to land on the node; null: no taint. */
  taint: z
    .union([
      z.null(),
      z.strictObject({ key: z.string().min(1), value: z.string().default('cello'), effect: z.enum(['NoSchedule', 'NoExecute', 'PreferNoSchedule']).default('NoSchedule') }),
    ])
    .default({ key: 'virtual-kubelet.io/provider', value: 'cello', effect: 'NoSchedule' }),
  labels: z.record(z.string(), z.string()).default({}),
  /** What the node offers the scheduler; default: derived from the provider (see docs/kubernetes.md). */
  capacity: z.strictObject({ cpu: quantity, memory: quantity, pods: z.number().int().positive() }).optional(),
  /**
   * The kubelet's --cluster-dns: the nameservers of pods with dnsPolicy ClusterFirst. Default:
   * the cluster IP of the kube-system/kube-dns Service, as Services are streamed to cells.
   */
  clusterDNS: z.array(z.ipv4()).min(1).max(3).optional(),
  /** The kubelet's --cluster-domain. */
  clusterDomain: dnsName.default('cluster.local'),
  /**
   * Where pods reach the API server (KUBERNETES_SERVICE_HOST/PORT). Default: the cluster IP and
   * port of the `default/kubernetes` Service, as on any node; the kubeconfig's server only in a
   * cluster without that Service.
   */
  podApiServer: z.strictObject({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).optional(),
  /** How often the Node's status (conditions, capacity from the provider's limits) is written; the Lease is renewed every 10 s regardless. */
  nodeStatusSeconds: z.number().int().min(1).max(300).default(30),
  /** Projected service-account tokens are requested again once this fraction of their lifetime has passed (kubelet: 0.8), and at least daily. */
  tokenRefreshRatio: z.number().gt(0, 'must be more than 0').lt(1, 'must be less than 1').default(0.8),
  /** How often the Secrets and ConfigMaps of running pods are read again, so edits reach their volumes. */
  dataSyncSeconds: z.number().int().min(1).max(3600).default(60),
  leaderElection: z
    .strictObject({
      enabled: z.boolean().default(true),
      namespace: z.string().min(1).default('cello-system'),
      name: z.string().min(1).default('cello-virtual-node'),
      leaseSeconds: z.number().int().positive().default(15),
    })
    .prefault({}),
});

export type KubernetesConfig = z.infer<typeof kubernetesConfigSchema>;

export function defaultInternalIP(): string {
  if (process.env.POD_IP) return process.env.POD_IP;
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

export function readKubeletTls(k: KubernetesConfig): { cert: string; key: string; clientCA: string } {
  const read = (field: string, path: string) => {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new Error(`kubernetes.kubelet.${field}: ${(err as Error).message}`);
    }
  };
  return { cert: read('certFile', k.kubelet.certFile), key: read('keyFile', k.kubelet.keyFile), clientCA: read('clientCAFile', k.kubelet.clientCAFile) };
}

export function leaderIdentity(): string {
  return process.env.POD_NAME || `${hostname()}-${process.pid}`;
}
