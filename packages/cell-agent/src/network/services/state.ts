// The Services a cell holds, as the controller's SyncServices stream left them: a snapshot and
// the deltas after it, each checked against the version it builds on. Objects the proxy could
// not program (a malformed address, a port out of range) are refused one by one, named, and
// left out, so one bad Service never keeps the others from working.
import { isIP, isIPv6 } from 'node:net';
import { Protocol as WireProtocol, type ClusterEndpointSlice, type ClusterService, type ServicesUpdate } from '@cello/proto/cell';
import { serviceKey, type EndpointSlice, type Protocol, type Service, type ServiceSnapshot, type TrafficPolicy } from './model.js';

export type UpdateResult = { kind: 'applied'; rejected: string[] } | { kind: 'resync'; reason: string };

export class ServiceState {
  version = 0;
  private services = new Map<string, Service>();
  private slices = new Map<string, EndpointSlice>();

  apply(u: ServicesUpdate): UpdateResult {
    if (u.baseVersion === 0) {
      this.services.clear();
      this.slices.clear();
    } else if (u.baseVersion !== this.version || this.version === 0) {
      return { kind: 'resync', reason: `delta on version ${u.baseVersion}, but this cell has ${this.version || 'none'}` };
    }
    const rejected: string[] = [];
    for (const s of u.services) {
      const key = serviceKey(s);
      const r = toService(s);
      if (typeof r === 'string') {
        rejected.push(`Service ${key}: ${r}`);
        this.services.delete(key);
      } else this.services.set(key, r);
    }
    for (const s of u.slices) {
      const key = serviceKey(s);
      const r = toSlice(s);
      if (typeof r === 'string') {
        rejected.push(`EndpointSlice ${key}: ${r}`);
        this.slices.delete(key);
      } else this.slices.set(key, r);
    }
    for (const k of u.removedServices) this.services.delete(serviceKey(k));
    for (const k of u.removedSlices) this.slices.delete(serviceKey(k));
    this.version = u.version;
    return { kind: 'applied', rejected };
  }

  snapshot(): ServiceSnapshot {
    return { services: [...this.services.values()], slices: [...this.slices.values()] };
  }
}

function protocol(p: WireProtocol): Protocol | undefined {
  switch (p) {
    case WireProtocol.PROTOCOL_UNSPECIFIED:
    case WireProtocol.PROTOCOL_TCP:
      return 'TCP';
    case WireProtocol.PROTOCOL_UDP:
      return 'UDP';
    case WireProtocol.PROTOCOL_SCTP:
      return 'SCTP';
    default:
      return undefined;
  }
}

const policy = (p: string): TrafficPolicy | undefined => (p === '' || p === 'Cluster' ? 'Cluster' : p === 'Local' ? 'Local' : undefined);
// Names end up in nftables chain names: only what the API server itself allows (DNS labels,
// IANA service names) may pass, so nothing in an object can change the meaning of a command.
const LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const validLabel = (s: string) => s.length <= 63 && LABEL.test(s);
const validPortName = (s: string) => s === '' || (s.length <= 15 && LABEL.test(s));
const validPort = (n: number) => Number.isInteger(n) && n >= 1 && n <= 65535;
// Both families are programmed (a dual-stack Service has one cluster IP of each). Addresses go
// into nft commands: only what node:net parses as an address, without a zone (`%eth0`), may pass.
const notAnAddress = (ips: string[]) => ips.find((ip) => isIP(ip) === 0 || ip.includes('%'));

function toService(s: ClusterService): Service | string {
  if (!validLabel(s.namespace) || !validLabel(s.name)) return 'namespace and name must be DNS labels';
  const clusterIPs = s.clusterIps.filter((ip) => ip !== 'None');
  const externalIPs = s.externalIps;
  const bad = notAnAddress([...clusterIPs, ...externalIPs]);
  if (bad !== undefined) return `${bad} is not an IP address`;
  // Traffic to an external IP arrives from outside and may leave for another cell: that needs
  // IPv6 forwarding in the cell, which the agent does not turn on (it would change how the
  // cell's interfaces take router advertisements).
  const v6External = externalIPs.find((ip) => isIPv6(ip));
  if (v6External !== undefined) return `externalIPs: ${v6External}: IPv6 external and load-balancer IPs are not served on cells (IPv6 cluster IPs are)`;
  const externalTrafficPolicy = policy(s.externalTrafficPolicy);
  const internalTrafficPolicy = policy(s.internalTrafficPolicy);
  if (!externalTrafficPolicy) return `externalTrafficPolicy: ${JSON.stringify(s.externalTrafficPolicy)} is not Cluster or Local`;
  if (!internalTrafficPolicy) return `internalTrafficPolicy: ${JSON.stringify(s.internalTrafficPolicy)} is not Cluster or Local`;
  const ports: Service['ports'] = [];
  for (const [i, p] of s.ports.entries()) {
    const proto = protocol(p.protocol);
    if (!proto) return `ports[${i}].protocol: unknown protocol ${p.protocol}`;
    if (!validPortName(p.name)) return `ports[${i}].name: ${JSON.stringify(p.name)} is not a port name`;
    if (!validPort(p.port)) return `ports[${i}].port: ${p.port} is not in 1-65535`;
    if (p.nodePort !== 0 && !validPort(p.nodePort)) return `ports[${i}].nodePort: ${p.nodePort} is not in 1-65535`;
    ports.push({ name: p.name, protocol: proto, port: p.port, ...(p.nodePort ? { nodePort: p.nodePort } : {}) });
  }
  return {
    namespace: s.namespace,
    name: s.name,
    clusterIPs,
    externalIPs,
    ports,
    ...(s.sessionAffinityTimeoutSeconds > 0 ? { sessionAffinity: { timeoutSeconds: s.sessionAffinityTimeoutSeconds } } : {}),
    externalTrafficPolicy,
    internalTrafficPolicy,
  };
}

function toSlice(s: ClusterEndpointSlice): EndpointSlice | string {
  if (!validLabel(s.namespace) || !validLabel(s.service)) return 'namespace and service must be DNS labels';
  const ports: EndpointSlice['ports'] = [];
  for (const [i, p] of s.ports.entries()) {
    const proto = protocol(p.protocol);
    if (!proto) return `ports[${i}].protocol: unknown protocol ${p.protocol}`;
    if (!validPort(p.port)) return `ports[${i}].port: ${p.port} is not in 1-65535`;
    ports.push({ name: p.name, protocol: proto, port: p.port });
  }
  const endpoints: EndpointSlice['endpoints'] = [];
  for (const [i, e] of s.endpoints.entries()) {
    const bad = notAnAddress(e.addresses);
    if (bad !== undefined) return `endpoints[${i}].addresses: ${bad} is not an IP address`;
    endpoints.push({ addresses: e.addresses, ready: e.ready, serving: e.serving, terminating: e.terminating });
  }
  return { namespace: s.namespace, name: s.name, service: s.service, ports, endpoints };
}
