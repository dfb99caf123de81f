// What a cell knows of the cluster's Services: the Services and their EndpointSlices, as the
// controller pushes them (it watches the API server once for all cells). The shapes follow the
// Kubernetes objects closely, with the API's defaults already applied, so the rules are a
// function of this snapshot alone.

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export type TrafficPolicy = 'Cluster' | 'Local';

export interface ServicePort {
  /** The port's name; '' for a Service's single unnamed port. EndpointSlice ports match by it. */
  name: string;
  protocol: Protocol;
  port: number;
  /** Served on the cell's own addresses (type NodePort or LoadBalancer). */
  nodePort?: number;
}

export interface Service {
  namespace: string;
  name: string;
  /** Cluster IPs, IPv4 and IPv6 (dual-stack: one of each); empty for a headless Service (DNS only, no rules) or an ExternalName. */
  clusterIPs: string[];
  /** `spec.externalIPs` (IPv4 only): served like NodePorts, on those addresses, with externalTrafficPolicy. */
  externalIPs: string[];
  ports: ServicePort[];
  /** `sessionAffinity: ClientIP`, with its timeout; undefined for None. */
  sessionAffinity?: { timeoutSeconds: number };
  /** Traffic from outside the cell (NodePort, external IPs). */
  externalTrafficPolicy: TrafficPolicy;
  /** Traffic to the cluster IP from this cell's pod. */
  internalTrafficPolicy: TrafficPolicy;
}

export interface Endpoint {
  addresses: string[];
  /** The API's conditions with their defaults applied (ready: nil = true; serving: nil = ready). */
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

export interface EndpointSlice {
  namespace: string;
  /** The `kubernetes.io/service-name` label. */
  service: string;
  name: string;
  ports: { name: string; protocol: Protocol; port: number }[];
  endpoints: Endpoint[];
}

export interface ServiceSnapshot {
  services: Service[];
  slices: EndpointSlice[];
}

export function serviceKey(s: { namespace: string; name: string }): string {
  return `${s.namespace}/${s.name}`;
}

export type Family = 4 | 6;
// Addresses were checked when they arrived (state.ts); an IPv6 address, and only one, has a colon
// (node:net's isIPv6 is a large regular expression: a full render spent a tenth of its time in it).
export const familyOf = (ip: string): Family => (ip.includes(':') ? 6 : 4);
