// Cluster DNS for the Kubernetes harness, run the way a cluster runs it: CoreDNS (built from the
// Go module proxy and packed into an image by scripts/k8s/build-coredns.sh, cached) as the
// `kube-system/coredns` Deployment, with its ServiceAccount and RBAC, its Corefile in a
// ConfigMap, behind the `kube-system/kube-dns` Service at a fixed cluster IP (kubeadm's
// manifests, minus the forward/loop/prometheus plugins the tests have no use for). Its pods
// reach the API server with their ServiceAccount token (in-cluster configuration), and
// kube-controller-manager writes the Service's EndpointSlice from their readiness.
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pushLayoutTag } from './fixtures.js';
import { waitFor } from './wait.js';
import type { KubeApiserver } from './kube.js';
import type { RegistryServer } from './registry.js';

const BUILD_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s', 'build-coredns.sh');

export interface CoreDnsBuild {
  /** The `coredns` binary. */
  binary: string;
  /** An OCI image layout whose tag `coredns` holds the binary alone. */
  layout: string;
}

/** Builds CoreDNS and its image on first use (cached afterwards). Fails with the build's error. */
export function corednsBuild(): CoreDnsBuild {
  const r = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  const bin = r.stdout.trim().split('\n').pop()!;
  return { binary: join(bin, 'coredns'), layout: join(dirname(bin), 'oci') };
}

/** Pushes the CoreDNS image to `registry`; returns its reference (e.g. `127.0.0.1:PORT/coredns/coredns:v1.15.0`). */
export async function pushCoreDns(registry: RegistryServer): Promise<string> {
  return pushLayoutTag(registry, corednsBuild().layout, 'coredns', 'coredns/coredns:v1.15.0');
}

export interface ClusterDns {
  /** The kube-dns Service's cluster IP (what pods' resolv.conf names). */
  clusterIP: string;
  domain: string;
  /** The CoreDNS pods' logs (for failure messages). */
  logs(): Promise<string>;
  /** Deletes what deployClusterDns() created. */
  remove(): Promise<void>;
}

export interface DeployClusterDnsOptions {
  /** The CoreDNS image (pushCoreDns()). */
  image: string;
  /** Default 10.0.0.10, in the harness's service range (kubeadm's choice for 10.96.0.0/12 is .10 too). */
  clusterIP?: string;
  /** Default cluster.local. */
  domain?: string;
  /** Scheduling for the CoreDNS pods (e.g. a virtual node's selector and toleration). */
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  timeoutMs?: number;
}

function manifests(o: Required<Omit<DeployClusterDnsOptions, 'timeoutMs'>>): Record<string, unknown>[] {
  const ns = 'kube-system';
  const labels = { 'k8s-app': 'kube-dns' };
  const corefile = `.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes ${o.domain} in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    reload
    loadbalance
}
`;
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'coredns', namespace: ns } },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'system:coredns' },
      rules: [
        { apiGroups: [''], resources: ['endpoints', 'services', 'pods', 'namespaces'], verbs: ['list', 'watch'] },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'system:coredns' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'system:coredns' },
      subjects: [{ kind: 'ServiceAccount', name: 'coredns', namespace: ns }],
    },
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'coredns', namespace: ns }, data: { Corefile: corefile } },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'coredns', namespace: ns, labels },
      spec: {
        replicas: 1,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: 'coredns',
            // CoreDNS must not resolve through itself.
            dnsPolicy: 'Default',
            terminationGracePeriodSeconds: 2,
            nodeSelector: o.nodeSelector,
            tolerations: o.tolerations,
            containers: [
              {
                name: 'coredns',
                image: o.image,
                args: ['-conf', '/etc/coredns/Corefile'],
                ports: [
                  { name: 'dns', containerPort: 53, protocol: 'UDP' },
                  { name: 'dns-tcp', containerPort: 53, protocol: 'TCP' },
                ],
                volumeMounts: [{ name: 'config-volume', mountPath: '/etc/coredns', readOnly: true }],
                livenessProbe: { httpGet: { path: '/health', port: 8080 }, initialDelaySeconds: 60, periodSeconds: 10 },
                readinessProbe: { httpGet: { path: '/ready', port: 8181 }, periodSeconds: 1 },
              },
            ],
            volumes: [{ name: 'config-volume', configMap: { name: 'coredns', items: [{ key: 'Corefile', path: 'Corefile' }] } }],
          },
        },
      },
    },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: ns, labels: { ...labels, 'kubernetes.io/name': 'CoreDNS' } },
      spec: {
        selector: labels,
        clusterIP: o.clusterIP,
        ports: [
          { name: 'dns', port: 53, targetPort: 53, protocol: 'UDP' },
          { name: 'dns-tcp', port: 53, targetPort: 53, protocol: 'TCP' },
        ],
      },
    },
  ];
}

/**
 * Deploys CoreDNS into the cluster (see the top of this file) and waits, with a deadline, until a
 * CoreDNS pod is Ready (it has synced with the API server) and listed as a ready endpoint of
 * kube-dns. Pods need a node to run on: with Cello, the virtual node (pass its selector and
 * toleration), whose controller must give pods an API server address they can reach.
 */
export async function deployClusterDns(kube: KubeApiserver, o: DeployClusterDnsOptions): Promise<ClusterDns> {
  const clusterIP = o.clusterIP ?? '10.0.0.10';
  const domain = o.domain ?? 'cluster.local';
  const objects = manifests({ image: o.image, clusterIP, domain, nodeSelector: o.nodeSelector ?? {}, tolerations: o.tolerations ?? [] });
  const logs = async () => {
    const r = await kube.kubectl(['-n', 'kube-system', 'logs', '-l', 'k8s-app=kube-dns', '--tail=50'], { timeoutMs: 15_000 });
    return `${r.stdout}${r.stderr}`;
  };
  const remove = async () => {
    await kube.kubectl(['delete', '--ignore-not-found', '--wait=false', '-f', '-'], { input: objects.map((x) => JSON.stringify(x)).join('\n') });
  };
  const applied = await kube.kubectl(['apply', '-f', '-'], { input: objects.map((x) => JSON.stringify(x)).join('\n') });
  if (applied.code !== 0) throw new Error(`deploying CoreDNS: ${applied.stderr}`);
  let seen = '';
  await waitFor(
    'a CoreDNS pod to be Ready and a ready endpoint of kube-dns',
    async () => {
      const pods = await kube.kubectl(['-n', 'kube-system', 'get', 'pods', '-l', 'k8s-app=kube-dns', '-o', 'json']);
      const slices = await kube.kubectl(['-n', 'kube-system', 'get', 'endpointslices', '-l', 'kubernetes.io/service-name=kube-dns', '-o', 'json']);
      if (pods.code !== 0 || slices.code !== 0) return false;
      const items = (
        JSON.parse(pods.stdout) as { items: { metadata: { name: string }; status: { phase?: string; podIP?: string; conditions?: { type: string; status: string }[] } }[] }
      ).items;
      const ready = items.filter((p) => p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')).map((p) => p.status.podIP);
      const endpoints = (JSON.parse(slices.stdout) as { items: { endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[] }[] }).items
        .flatMap((s) => s.endpoints ?? [])
        .filter((e) => e.conditions?.ready)
        .flatMap((e) => e.addresses);
      seen = `pods ${JSON.stringify(items.map((p) => [p.metadata.name, p.status.phase, p.status.podIP]))}, ready endpoints ${JSON.stringify(endpoints)}`;
      return ready.some((ip) => ip && endpoints.includes(ip));
    },
    { timeoutMs: o.timeoutMs ?? 120_000, intervalMs: 500 },
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}; ${seen}\nCoreDNS logs:\n${await logs()}`);
  });
  return { clusterIP, domain, logs, remove };
}
