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

/**
 * The endpoints of one address family: a cluster IP of that family is DNATed only to them.
 * Written for a cold agent: a cell's first sync runs this for every Service port before the
 * JIT has warmed up, so it builds plain arrays (no Map per port, no id strings) and sorts only
 * when the slice's order is not already the stable one (a single slice usually is).
 */
export function endpointsFor(service: Service, port: ServicePort, slices: readonly EndpointSlice[], localAddresses: ReadonlySet<string>, family: Family = 4): PortEndpoints {
  const ready: Target[] = [];
  const terminating: Target[] = [];
  let any = false;
  for (const slice of slices) {
    if (slice.namespace !== service.namespace || slice.service !== service.name) continue;
    let targetPort = -1;
    for (const p of slice.ports) {
      if (p.name === port.name && p.protocol === port.protocol) {
        targetPort = p.port;
        break;
      }
    }
    if (targetPort < 0) continue;
    for (const ep of slice.endpoints) {
      for (const ip of ep.addresses) {
        if (familyOf(ip) !== family) continue;
        any = true;
        if (ep.ready) ready.push({ ip, port: targetPort });
        else if (ep.serving && ep.terminating) terminating.push({ ip, port: targetPort });
      }
    }
  }
  const cluster = ordered(ready.length > 0 ? ready : terminating);
  let local: Target[] = [];
  if (localAddresses.size > 0) {
    local = ordered(ready).filter((t) => localAddresses.has(t.ip));
    if (local.length === 0) local = ordered(terminating).filter((t) => localAddresses.has(t.ip));
  }
  return { cluster, local, any };
}

/** Sorted by address and port, each target once (the same address may come in two slices). */
function ordered(ts: Target[]): Target[] {
  let sorted = true;
  for (let i = 1; i < ts.length && sorted; i++) sorted = byAddress(ts[i - 1]!, ts[i]!) < 0;
  if (sorted) return ts;
  ts.sort(byAddress);
  return ts.filter((t, i) => i === 0 || byAddress(ts[i - 1]!, t) !== 0);
}

// A stable order, so the same endpoints always render the same rules (and no needless update).
function byAddress(a: Target, b: Target): number {
  return a.ip === b.ip ? a.port - b.port : a.ip < b.ip ? -1 : 1;
}
