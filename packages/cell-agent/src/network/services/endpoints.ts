// Which endpoints serve a Service port, by kube-proxy's rules: ready endpoints serve; when none
// is ready, serving endpoints that are terminating do (so a rolling update never drops traffic
// that could still be served); endpoints that are neither never receive new connections.
// "Local" means on this cell: an endpoint whose address is one of the cell's own.
import { familyOf, type EndpointSlice, type Family, type Service, type ServicePort } from './model.js';

export interface Target {
  ip: string;
  port: number;
}

export interface PortEndpoints {
  /** For cluster-wide traffic policy. */
  cluster: Target[];
  /** For Local traffic policy: endpoints on this cell. */
  local: Target[];
  /** Whether the port has any endpoint at all, usable or not (reject vs drop when none serves). */
  any: boolean;
}

/** The endpoints of one address family: a cluster IP of that family is DNATed only to them. */
export function endpointsFor(service: Service, port: ServicePort, slices: readonly EndpointSlice[], localAddresses: ReadonlySet<string>, family: Family = 4): PortEndpoints {
  const ready = new Map<string, Target>();
  const terminating = new Map<string, Target>();
  let any = false;
  for (const slice of slices) {
    if (slice.namespace !== service.namespace || slice.service !== service.name) continue;
    const sp = slice.ports.find((p) => p.name === port.name && p.protocol === port.protocol);
    if (!sp) continue;
    for (const ep of slice.endpoints) {
      for (const ip of ep.addresses) {
        if (familyOf(ip) !== family) continue;
        any = true;
        const t = { ip, port: sp.port };
        const id = `${ip}:${sp.port}`;
        if (ep.ready) ready.set(id, t);
        else if (ep.serving && ep.terminating) terminating.set(id, t);
      }
    }
  }
  const sorted = (m: Map<string, Target>) => [...m.values()].sort(byAddress);
  const cluster = sorted(ready.size > 0 ? ready : terminating);
  const readyLocal = [...ready.values()].filter((t) => localAddresses.has(t.ip));
  const local = readyLocal.length > 0 ? readyLocal.sort(byAddress) : sorted(terminating).filter((t) => localAddresses.has(t.ip));
  return { cluster, local, any };
}

// A stable order, so the same endpoints always render the same rules (and no needless update).
function byAddress(a: Target, b: Target): number {
  return a.ip === b.ip ? a.port - b.port : a.ip < b.ip ? -1 : 1;
}
