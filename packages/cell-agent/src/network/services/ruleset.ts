// Service rules as nftables, on kube-proxy's nftables model: one table owned by the agent,
// verdict maps keyed by (address . protocol . port) so a packet finds its Service in one
// lookup whatever their number. Each Service renders on its own, so a change to one Service
// rewrites only its map elements and chains (see transaction.ts), never the whole table.
// One `inet` table serves both families: IPv4 and IPv6 cluster IPs (dual-stack Services).
//
//   nat-prerouting / nat-output -> services:  ip daddr . l4proto . dport vmap @service-ips
//                                              ip6 daddr . l4proto . dport vmap @service-ips6
//                                              (own IPv4 address) l4proto . dport vmap @service-nodeports
//   @service-ips[clusterIP]     -> bal4-N: one rule shared by every Service with N usable
//                                  endpoints: DNAT to @eps4-N[daddr . l4proto . dport . numgen mod N]
//                                  (bal6-N / @eps6-N for IPv6). A Service is map elements only:
//                                  no chain, no rule of its own — what makes 1,000 Services cheap
//                                  to load (nft parses an element far faster than a rule).
//   @service-ips[clusterIP] with ClientIP affinity -> clu-* / loc-* chains (below)
//   @service-ips[externalIP], @service-nodeports -> ext-*: masquerade, then clu-* (Cluster) or loc-* (Local)
//   clu-* / loc-*               -> DNAT to an endpoint numgen picks, one rule per endpoint (pickOne);
//                                  ClientIP affinity: the client's endpoint if it has one, else
//                                  numgen over ep-* chains
//   ep-* (affinity only)        -> remember the client; DNAT to the endpoint
//   filter hooks (new conns)    -> @no-endpoint-services(6) / @no-endpoint-nodeports: reject (no endpoints) or drop (none local)
//   filter after DNAT (new)     -> cluster-ips-check: a packet still addressed to a cluster IP
//                                  (@cluster-ips / @cluster-ips6) is for a port its Service does
//                                  not have: rejected, as kube-proxy does, not sent on to nowhere
import { createHash } from 'node:crypto';
import { endpointsFor, type Target } from './endpoints.js';
import { familyOf, serviceKey, type EndpointSlice, type Family, type Service, type ServicePort, type ServiceSnapshot } from './model.js';

export const TABLE = 'inet cello';
/** The table agents before dual-stack owned: removed by a full sync, so its rules never linger beside ours. */
export const LEGACY_TABLE = 'ip cello';
/** The mark that asks nat-postrouting to masquerade (kube-proxy's bit; a cell runs no kube-proxy). */
export const MASQUERADE_MARK = '0x4000';

/** The nftables objects one Service owns. */
export interface ServiceRules {
  /**
   * Map elements, as nft writes them (`key : value`), by map: a base map (service-ips, ...) or a
   * balancer's endpoint map (eps4-N, eps6-N, whose value is the DNAT target `address . port`).
   * Kept as the very strings the transaction carries: a full apply joins them, a change compares
   * them, and nothing is rebuilt for a Service that did not change.
   */
  elements: Map<string, string[]>;
  /** Chain name -> its rules, in order. */
  chains: Map<string, string[]>;
  /** ClientIP affinity sets: name -> the set's declaration. */
  sets: Map<string, string>;
  /** The shared balancers (see balancerCommands) its elements use, by name: bal4-3, bal6-2, ... */
  balancers: Set<string>;
}

/** The key of an element string (`key : value`, or a set's bare key): what `delete element` names. */
export function elementKey(element: string): string {
  const i = element.indexOf(' : ');
  return i < 0 ? element : element.slice(0, i);
}

/** The table's fixed part: hooks, maps and the shared chains. */
export function baseCommands(): string[] {
  const t = TABLE;
  const hook = (name: string, type: string, hookName: string, priority: string) =>
    `add chain ${t} ${name} { type ${type} hook ${hookName} priority ${priority} ; policy accept ; }`;
  return [
    `add map ${t} service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }`,
    `add map ${t} service-ips6 { type ipv6_addr . inet_proto . inet_service : verdict ; }`,
    `add map ${t} service-nodeports { type inet_proto . inet_service : verdict ; }`,
    `add map ${t} no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }`,
    `add map ${t} no-endpoint-services6 { type ipv6_addr . inet_proto . inet_service : verdict ; }`,
    `add map ${t} no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }`,
    `add set ${t} cluster-ips { type ipv4_addr ; }`,
    `add set ${t} cluster-ips6 { type ipv6_addr ; }`,
    `add chain ${t} services`,
    `add rule ${t} services ip daddr . meta l4proto . th dport vmap @service-ips`,
    `add rule ${t} services ip6 daddr . meta l4proto . th dport vmap @service-ips6`,
    // Node ports are served on the cell's IPv4 addresses (a cell's address is IPv4).
    `add rule ${t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports`,
    `add chain ${t} service-endpoints-check`,
    `add rule ${t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services`,
    `add rule ${t} service-endpoints-check ip6 daddr . meta l4proto . th dport vmap @no-endpoint-services6`,
    `add rule ${t} service-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports`,
    `add chain ${t} cluster-ips-check`,
    `add rule ${t} cluster-ips-check ip daddr @cluster-ips reject`,
    `add rule ${t} cluster-ips-check ip6 daddr @cluster-ips6 reject`,
    `add chain ${t} reject-chain`,
    `add rule ${t} reject-chain reject`,
    `add chain ${t} mark-for-masquerade`,
    `add rule ${t} mark-for-masquerade meta mark set meta mark | ${MASQUERADE_MARK}`,
    `add chain ${t} masquerading`,
    `add rule ${t} masquerading meta mark & ${MASQUERADE_MARK} == 0 return`,
    `add rule ${t} masquerading meta mark set meta mark ^ ${MASQUERADE_MARK}`,
    `add rule ${t} masquerading masquerade fully-random`,
    hook('nat-prerouting', 'nat', 'prerouting', '-100'),
    `add rule ${t} nat-prerouting jump services`,
    hook('nat-output', 'nat', 'output', '-100'),
    `add rule ${t} nat-output jump services`,
    hook('nat-postrouting', 'nat', 'postrouting', '100'),
    `add rule ${t} nat-postrouting jump masquerading`,
    // Before the usual filter priority (0), so a Service without endpoints is refused at once
    // rather than timing out; reject is only allowed in input, forward and output.
    ...['input', 'forward', 'output'].flatMap((h) => [hook(`filter-${h}`, 'filter', h, '-110'), `add rule ${t} filter-${h} ct state new jump service-endpoints-check`]),
    // After DNAT (nat-output is -100): traffic a Service port matched now carries its endpoint's
    // address, so what still goes to a cluster IP matched none. Forwarded traffic was DNATed
    // in prerouting, before any forward hook.
    hook('filter-output-post-dnat', 'filter', 'output', '-90'),
    `add rule ${t} filter-output-post-dnat ct state new jump cluster-ips-check`,
    `add rule ${t} filter-forward ct state new jump cluster-ips-check`,
  ];
}

/**
 * The shared balancer for Services of one family with N usable endpoints: a map from
 * (cluster IP . protocol . port . i) to the i-th endpoint, and one rule that DNATs to the entry
 * `numgen random mod N` picks. Created when a Service first needs it, deleted when none does.
 */
export function balancerCommands(name: string): { add: string[]; remove: string[] } {
  const [family, n] = parseBalancer(name);
  const ip = family === 6 ? 'ip6' : 'ip';
  const map = endpointMap(family, n);
  const pick = `${ip} daddr . meta l4proto . th dport . numgen random mod ${n}`;
  return {
    add: [
      `add map ${TABLE} ${map} { typeof ${pick} : ${ip} daddr . th dport ; }`,
      `add chain ${TABLE} ${name}`,
      // The protocol match only gives nft the transport context a DNAT to a port needs.
      `add rule ${TABLE} ${name} meta l4proto { tcp, udp, sctp } dnat ${ip} to ${pick} map @${map}`,
    ],
    remove: [`flush chain ${TABLE} ${name}`, `delete chain ${TABLE} ${name}`, `delete map ${TABLE} ${map}`],
  };
}

const balancerName = (family: Family, n: number) => `bal${family}-${n}`;
const endpointMap = (family: Family, n: number) => `eps${family}-${n}`;
function parseBalancer(name: string): [Family, number] {
  const m = /^bal([46])-(\d+)$/.exec(name);
  if (!m) throw new Error(`not a balancer: ${name}`);
  return [Number(m[1]) as Family, Number(m[2])];
}

/**
 * Remembers each Service's rules by the identity of its inputs (the Service object and its
 * slices), so that with a snapshot whose unchanged objects are the same objects (as the
 * SyncServices state keeps them), a sync renders only the Services that changed.
 */
export class RenderCache {
  private readonly entries = new WeakMap<Service, { slices: readonly EndpointSlice[]; rules: ServiceRules | undefined }>();
  constructor(readonly localAddresses: ReadonlySet<string>) {}

  get(svc: Service, slices: readonly EndpointSlice[]): ServiceRules | undefined | null {
    const e = this.entries.get(svc);
    if (!e || e.slices.length !== slices.length || e.slices.some((s, i) => s !== slices[i])) return null;
    return e.rules;
  }

  set(svc: Service, slices: readonly EndpointSlice[], rules: ServiceRules | undefined): void {
    this.entries.set(svc, { slices, rules });
  }
}

/** Every Service's rules, by `namespace/name`. Headless and ExternalName Services have none. */
export function renderServices(snapshot: ServiceSnapshot, localAddresses: ReadonlySet<string>, cache?: RenderCache): Map<string, ServiceRules> {
  const out = new Map<string, ServiceRules>();
  const slicesOf = new Map<string, EndpointSlice[]>();
  for (const slice of snapshot.slices) {
    const key = serviceKey({ namespace: slice.namespace, name: slice.service });
    const list = slicesOf.get(key);
    if (list) list.push(slice);
    else slicesOf.set(key, [slice]);
  }
  for (const svc of snapshot.services) {
    const key = serviceKey(svc);
    const slices = slicesOf.get(key) ?? NO_SLICES;
    let rules = cache?.get(svc, slices);
    if (rules === null || (rules === undefined && !cache)) {
      rules = renderService(svc, slices, localAddresses);
      cache?.set(svc, slices, rules);
    }
    if (rules) out.set(key, rules);
  }
  return out;
}

const NO_SLICES: readonly EndpointSlice[] = [];
const NONE: readonly string[] = [];

function renderService(svc: Service, slices: readonly EndpointSlice[], localAddresses: ReadonlySet<string>): ServiceRules | undefined {
  const r: ServiceRules = { elements: new Map(), chains: new Map(), sets: new Map(), balancers: new Set() };
  // Split by family once per Service, not per port (most Services have one IPv4 cluster IP).
  let v4 = svc.clusterIPs;
  let v6 = NONE;
  if (svc.clusterIPs.some((ip) => familyOf(ip) === 6)) {
    v4 = svc.clusterIPs.filter((ip) => familyOf(ip) === 4);
    v6 = svc.clusterIPs.filter((ip) => familyOf(ip) === 6);
  }
  const ext4 = svc.externalIPs.length === 0 ? NONE : svc.externalIPs.filter((ip) => familyOf(ip) === 4);
  const ext6 = svc.externalIPs.length === 0 ? NONE : svc.externalIPs.filter((ip) => familyOf(ip) === 6);
  for (const ip of v4) addElement(r, 'cluster-ips', ip);
  for (const ip of v6) addElement(r, 'cluster-ips6', ip);
  for (const port of svc.ports) {
    if (v4.length > 0 || ext4.length > 0 || port.nodePort !== undefined) {
      renderPort(r, svc, port, { family: 4, clusterIPs: v4, externalIPs: ext4, nodePort: port.nodePort }, endpointsFor(svc, port, slices, localAddresses, 4));
    }
    if (v6.length > 0 || ext6.length > 0) {
      renderPort(r, svc, port, { family: 6, clusterIPs: v6, externalIPs: ext6, nodePort: undefined }, endpointsFor(svc, port, slices, localAddresses, 6));
    }
  }
  return r.chains.size > 0 || r.elements.size > 0 ? r : undefined;
}

interface FamilyAddresses {
  family: Family;
  clusterIPs: readonly string[];
  externalIPs: readonly string[];
  nodePort: number | undefined;
}

const NFT_PROTOCOL: Record<ServicePort['protocol'], string> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };

function addElement(r: ServiceRules, map: string, element: string): void {
  const list = r.elements.get(map);
  if (list) list.push(element);
  else r.elements.set(map, [element]);
}

/**
 * Cluster IPs without session affinity: map elements only, on the shared balancer for the
 * endpoint count (`refusal`, when set, is the verdict for a Service no endpoint serves).
 */
function balancedClusterIPs(r: ServiceRules, a: FamilyAddresses, proto: string, port: number, targets: readonly Target[], refusal: string | undefined): void {
  const suffix = a.family === 6 ? '6' : '';
  for (const clusterIP of a.clusterIPs) {
    const key = `${clusterIP} . ${proto} . ${port}`;
    if (refusal) {
      addElement(r, `no-endpoint-services${suffix}`, `${key} : ${refusal}`);
      continue;
    }
    const count = targets.length;
    const balancer = balancerName(a.family, count);
    r.balancers.add(balancer);
    addElement(r, `service-ips${suffix}`, `${key} : goto ${balancer}`);
    const map = endpointMap(a.family, count);
    for (let i = 0; i < count; i++) addElement(r, map, `${key} . ${i} : ${targets[i]!.ip} . ${targets[i]!.port}`);
  }
}

function renderPort(r: ServiceRules, svc: Service, port: ServicePort, a: FamilyAddresses, eps: ReturnType<typeof endpointsFor>): void {
  const proto = NFT_PROTOCOL[port.protocol];
  // Most Services: a cluster IP only, no affinity. No chain, no closure: the cold first sync of a
  // cell runs this for every Service before the JIT has compiled any of it.
  if (svc.sessionAffinity === undefined && a.nodePort === undefined && a.externalIPs.length === 0) {
    const targets = svc.internalTrafficPolicy === 'Local' ? eps.local : eps.cluster;
    balancedClusterIPs(r, a, proto, port.port, targets, eps.cluster.length === 0 ? 'goto reject-chain' : targets.length === 0 ? 'drop' : undefined);
    return;
  }
  // IPv4 names are those of agents before dual-stack; IPv6 objects carry the family. Only chains
  // are named by it: most Services have none (see the balancers), so it is made on demand.
  let named: { id: string; hash: string } | undefined;
  const n = () => {
    if (named) return named;
    const id = `${svc.namespace}/${svc.name}/${proto}/${port.name || port.port}${a.family === 6 ? '/v6' : ''}`;
    return (named = { id, hash: hash(id) });
  };
  const affinity = svc.sessionAffinity?.timeoutSeconds;
  const ip = a.family === 6 ? 'ip6' : 'ip';
  const suffix = a.family === 6 ? '6' : '';

  // Without affinity a balancing chain DNATs to the endpoint numgen picks; with ClientIP
  // affinity each endpoint gets a chain that remembers its clients in a timed set, and the
  // balancing chain first sends a known client back to its endpoint.
  const dnat = (t: Target) => `meta l4proto ${proto} dnat ${ip} to ${a.family === 6 ? `[${t.ip}]` : t.ip}:${t.port}`;
  const endpointChain = (t: Target, timeout: number) => {
    // An IPv6 address has colons, which nft does not take in a name.
    const name = `ep-${n().hash}-${n().id}__${t.ip.replaceAll(':', '-')}/${t.port}`;
    if (!r.chains.has(name)) {
      const set = affinitySet(name, timeout);
      r.sets.set(set, `{ type ${a.family === 6 ? 'ipv6_addr' : 'ipv4_addr'} ; flags dynamic,timeout ; timeout ${timeout}s ; }`);
      r.chains.set(name, [`update @${set} { ${ip} saddr }`, dnat(t)]);
    }
    return name;
  };
  const balance = (name: string, targets: Target[]) => {
    if (r.chains.has(name)) return name;
    let rules: string[];
    if (affinity === undefined) {
      rules = pickOne(targets.map(dnat));
    } else {
      const chains = targets.map((t) => endpointChain(t, affinity));
      rules = chains.map((c) => `${ip} saddr @${affinitySet(c, affinity)} goto ${c}`);
      rules.push(...pickOne(chains.map((c) => `goto ${c}`)));
    }
    r.chains.set(name, rules);
    return name;
  };
  const cluster = () => balance(`clu-${n().hash}-${n().id}`, eps.cluster);
  const local = () => balance(`loc-${n().hash}-${n().id}`, eps.local);
  // No usable endpoint: refused at once when the Service has none at all, dropped when it has
  // some but none this traffic policy may use (as kube-proxy does).
  const refusal = (targets: Target[]) => (eps.cluster.length === 0 ? 'goto reject-chain' : targets.length === 0 ? 'drop' : undefined);

  // Traffic from this cell's pod to the cluster IP.
  const internal = svc.internalTrafficPolicy === 'Local' ? eps.local : eps.cluster;
  if (affinity === undefined) balancedClusterIPs(r, a, proto, port.port, internal, refusal(internal));
  else {
    for (const clusterIP of a.clusterIPs) {
      const key = `${clusterIP} . ${proto} . ${port.port}`;
      const no = refusal(internal);
      addElement(r, no ? `no-endpoint-services${suffix}` : `service-ips${suffix}`, `${key} : ${no ?? `goto ${svc.internalTrafficPolicy === 'Local' ? local() : cluster()}`}`);
    }
  }

  // Traffic from outside the cell: its node port and the Service's external IPs.
  if (a.nodePort === undefined && a.externalIPs.length === 0) return;
  const externalLocal = svc.externalTrafficPolicy === 'Local';
  const external = externalLocal ? eps.local : eps.cluster;
  const no = refusal(external);
  let verdict = no;
  if (!no) {
    const name = `ext-${n().hash}-${n().id}`;
    // Local keeps the client's address (no masquerade), so only this cell's endpoints may
    // answer; traffic the cell itself sends still reaches any endpoint.
    r.chains.set(
      name,
      externalLocal
        ? ['fib saddr type local jump mark-for-masquerade', `fib saddr type local goto ${cluster()}`, `goto ${local()}`]
        : ['jump mark-for-masquerade', `goto ${cluster()}`],
    );
    verdict = `goto ${name}`;
  }
  if (a.nodePort !== undefined) addElement(r, no ? 'no-endpoint-nodeports' : 'service-nodeports', `${proto} . ${a.nodePort} : ${verdict!}`);
  for (const extIP of a.externalIPs) addElement(r, no ? `no-endpoint-services${suffix}` : `service-ips${suffix}`, `${extIP} . ${proto} . ${port.port} : ${verdict!}`);
}

/**
 * Rules that take exactly one of `verdicts`, each with equal chance: rule i takes its verdict
 * with probability 1/(n-i) (`numgen random mod (n-i) == 0`), the last one always — the
 * probability cascade of kube-proxy's iptables mode, written with nftables' numgen.
 *
 * Not `numgen random mod n vmap { 0 : ..., 1 : ... }` (kube-proxy's nftables form): each such
 * rule carries an anonymous set, and the kernel names and binds anonymous sets by scanning every
 * set of the table and every entry of the transaction, so a table of 1,000 Services cost
 * quadratic kernel time (nearly half of a full apply's CPU). Plain rules cost the same per Service
 * however many there are, and one endpoint change still rewrites only its Service's chain.
 */
export function pickOne(verdicts: readonly string[]): string[] {
  const n = verdicts.length;
  return verdicts.map((v, i) => (i === n - 1 ? v : `numgen random mod ${n - i} == 0 ${v}`));
}

// Names carry the Service for a reader of `nft list ruleset`, and a hash so that truncation or
// odd characters can never make two objects share a name.
function hash(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 8);
}

function affinitySet(endpointChain: string, timeout: number): string {
  return `aff-${hash(`${endpointChain}|${timeout}`)}`;
}
