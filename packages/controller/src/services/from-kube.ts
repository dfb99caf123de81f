// Kubernetes Services and EndpointSlices -> what a cell's Service proxy needs, with the API's
// defaults applied the way kube-proxy reads them.
import { isIPv6 } from 'node:net';
import { Protocol, type ClusterEndpointSlice, type ClusterService } from '@cello/proto/cell';

export interface KubeService {
  metadata: { namespace?: string; name: string; uid?: string; resourceVersion?: string };
  spec?: {
    type?: string;
    clusterIP?: string;
    clusterIPs?: string[];
    externalIPs?: string[];
    ports?: { name?: string; protocol?: string; port: number; nodePort?: number }[];
    sessionAffinity?: string;
    sessionAffinityConfig?: { clientIP?: { timeoutSeconds?: number } };
    externalTrafficPolicy?: string;
    internalTrafficPolicy?: string;
  };
  status?: { loadBalancer?: { ingress?: { ip?: string }[] } };
}

export interface KubeEndpointSlice {
  metadata: { namespace?: string; name: string; labels?: Record<string, string> };
  addressType?: string;
  ports?: { name?: string; protocol?: string; port?: number | null }[] | null;
  endpoints?: { addresses: string[]; conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null } }[] | null;
}

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
/** The API's default for sessionAffinityConfig.clientIP.timeoutSeconds. */
const DEFAULT_AFFINITY_SECONDS = 10800;

function protocol(p: string | undefined): Protocol {
  return p === 'UDP' ? Protocol.PROTOCOL_UDP : p === 'SCTP' ? Protocol.PROTOCOL_SCTP : Protocol.PROTOCOL_TCP;
}

export function toClusterService(s: KubeService): ClusterService {
  const spec = s.spec ?? {};
  const type = spec.type ?? 'ClusterIP';
  // Headless and ExternalName Services are DNS only: no address to program.
  const dnsOnly = type === 'ExternalName' || spec.clusterIP === 'None';
  const clusterIps = dnsOnly ? [] : (spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : []));
  const nodePorts = type === 'NodePort' || type === 'LoadBalancer';
  const ingress = type === 'LoadBalancer' ? (s.status?.loadBalancer?.ingress ?? []).flatMap((i) => (i.ip ? [i.ip] : [])) : [];
  return {
    namespace: s.metadata.namespace ?? 'default',
    name: s.metadata.name,
    clusterIps,
    externalIps: [...(spec.externalIPs ?? []), ...ingress],
    ports: dnsOnly ? [] : (spec.ports ?? []).map((p) => ({ name: p.name ?? '', protocol: protocol(p.protocol), port: p.port, nodePort: nodePorts ? (p.nodePort ?? 0) : 0 })),
    sessionAffinityTimeoutSeconds: spec.sessionAffinity === 'ClientIP' ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? DEFAULT_AFFINITY_SECONDS) : 0,
    externalTrafficPolicy: spec.externalTrafficPolicy === 'Local' ? 'Local' : 'Cluster',
    internalTrafficPolicy: spec.internalTrafficPolicy === 'Local' ? 'Local' : 'Cluster',
  };
}

/** undefined for a slice no Service proxy uses (FQDN, no owning Service). IPv4 and IPv6 slices both serve: a dual-stack Service has one of each. */
export function toClusterEndpointSlice(s: KubeEndpointSlice): ClusterEndpointSlice | undefined {
  const service = s.metadata.labels?.[SERVICE_NAME_LABEL];
  const addressType = s.addressType ?? 'IPv4';
  if (!service || (addressType !== 'IPv4' && addressType !== 'IPv6')) return undefined;
  return {
    namespace: s.metadata.namespace ?? 'default',
    name: s.metadata.name,
    service,
    // A port of null means "all ports", which only a selector-less slice can say; no proxy
    // can program it.
    ports: (s.ports ?? []).flatMap((p) => (typeof p.port === 'number' ? [{ name: p.name ?? '', protocol: protocol(p.protocol ?? undefined), port: p.port }] : [])),
    endpoints: (s.endpoints ?? []).map((e) => {
      // The API's nil meanings: ready unknown counts as ready; serving unknown as ready.
      const ready = e.conditions?.ready ?? true;
      return { addresses: e.addresses, ready, serving: e.conditions?.serving ?? ready, terminating: e.conditions?.terminating ?? false };
    }),
  };
}

/**
 * Why cells refuse a Service, for an Event on it (the agents refuse it by name too); undefined
 * when they serve it. IPv6 external and load-balancer IPs: traffic to them may leave a cell for
 * another, which needs IPv6 forwarding, which cells do not turn on.
 */
export function refusedOnCells(s: KubeService): string | undefined {
  const v6 = toClusterService(s).externalIps.filter((ip) => isIPv6(ip));
  if (v6.length === 0) return undefined;
  return `pods on Cello cells cannot reach this Service: its IPv6 external or load-balancer IPs (${v6.join(', ')}) are not served on cells (IPv6 cluster IPs are); remove them or serve this Service from nodes`;
}
