// /etc/hosts, /etc/resolv.conf and /etc/hostname for the pod, written once per pod under the
// state dir and bind-mounted into every unit, as the kubelet does (pkg/kubelet/network/dns):
// dnsPolicy picks the cluster's DNS or the cell's own resolver, dnsConfig is merged on top,
// and the limits the kubelet enforces are enforced here too, each with an event.
import { readFileSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { ClusterDNS, Pod } from '@cello/proto/cell';
import { writeIfChanged } from '../runtime/files.js';

export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';
// The kubelet's limits (validation.MaxDNSNameservers, MaxDNSSearchPaths, MaxDNSSearchListChars).
const MAX_NAMESERVERS = 3;
const MAX_SEARCHES = 32;
const MAX_SEARCH_CHARS = 2048;

export interface PodFiles {
  hosts: string;
  resolv: string;
  hostname: string;
}

export interface DnsWarning {
  reason: string;
  message: string;
}

/** The pod's hostname; a hostNetwork pod has the cell's, as a kubelet gives it the node's. */
export function podHostname(pod: Pod, cellHostname: () => string = hostname): string {
  if (pod.spec?.hostNetwork) return cellHostname();
  return (pod.spec?.hostname || pod.metadata?.name || 'pod').slice(0, 63);
}

/** The cell's own files a hostNetwork pod sees (a node's /etc/hosts and hostname, for a kubelet). */
export interface CellFiles {
  hosts: string;
  hostname: () => string;
}
const CELL_FILES: CellFiles = { hosts: '/etc/hosts', hostname };

interface Resolver {
  nameservers: string[];
  searches: string[];
  options: string[];
}

/** The resolv.conf a kubelet would give the pod, and what it would warn about. */
export function podResolver(pod: Pod, clusterDNS: ClusterDNS | undefined, hostResolv: string): { resolver: Resolver; warnings: DnsWarning[] } {
  const warnings: DnsWarning[] = [];
  const policy = pod.spec?.dnsPolicy || 'ClusterFirst';
  const host = () => parseResolvConf(hostResolv);
  let r: Resolver;
  // The kubelet's rule: ClusterFirst in the host's network means the host's resolver (the pod
  // could not reach a cluster DNS the host cannot); ClusterFirstWithHostNet asks for the
  // cluster's anyway, and means ClusterFirst for any other pod.
  const wantsCluster = policy === 'ClusterFirstWithHostNet' || (policy === 'ClusterFirst' && !pod.spec?.hostNetwork);
  if (policy === 'None') r = { nameservers: [], searches: [], options: [] };
  else if (wantsCluster && clusterDNS && clusterDNS.nameservers.length > 0) {
    const domain = clusterDNS.domain || DEFAULT_CLUSTER_DOMAIN;
    const ns = pod.metadata?.namespace || 'default';
    r = { nameservers: [...clusterDNS.nameservers], searches: [`${ns}.svc.${domain}`, `svc.${domain}`, domain, ...host().searches], options: ['ndots:5'] };
  } else {
    // Outside a cluster (no ClusterDNS at all) the cell's resolver is simply what pods use.
    if (wantsCluster && clusterDNS) {
      warnings.push({
        reason: 'MissingClusterDNS',
        message: `pod: "${pod.metadata?.name}". ${policy} policy specified but no cluster DNS IP configured. Falling back to "Default" policy.`,
      });
    }
    r = host();
  }
  const dc = pod.spec?.dnsConfig;
  if (dc) {
    r.nameservers = unique([...r.nameservers, ...dc.nameservers]);
    r.searches = unique([...r.searches, ...dc.searches]);
    const opts = new Map(r.options.map((o) => [o.split(':')[0]!, o] as [string, string]));
    for (const o of dc.options) opts.set(o.name, o.value !== undefined ? `${o.name}:${o.value}` : o.name);
    r.options = [...opts.values()];
  }
  if (r.nameservers.length > MAX_NAMESERVERS) {
    warnings.push({
      reason: 'DNSConfigForming',
      message: `Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: ${r.nameservers.slice(0, MAX_NAMESERVERS).join(' ')}`,
    });
    r.nameservers = r.nameservers.slice(0, MAX_NAMESERVERS);
  }
  const fitted = fitSearches(r.searches);
  if (fitted.length < r.searches.length) {
    warnings.push({
      reason: 'DNSConfigForming',
      message: `Search Line limits were exceeded, some search paths have been omitted, the applied search line is: ${fitted.join(' ')}`,
    });
    r.searches = fitted;
  }
  return { resolver: r, warnings };
}

export function writePodFiles(
  dir: string,
  pod: Pod,
  podIP: string,
  clusterDNS?: ClusterDNS,
  hostResolv = '/etc/resolv.conf',
  cell: CellFiles = CELL_FILES,
): { files: PodFiles; warnings: DnsWarning[] } {
  mkdirSync(dir, { recursive: true });
  const host = podHostname(pod, cell.hostname);
  const domain = clusterDNS?.domain || DEFAULT_CLUSTER_DOMAIN;
  const fqdn = pod.spec?.subdomain ? `${host}.${pod.spec.subdomain}.${pod.metadata?.namespace || 'default'}.svc.${domain}` : '';
  // A hostNetwork pod sees the cell's own hosts file (plus its aliases), as the kubelet copies the node's.
  const hosts = pod.spec?.hostNetwork
    ? [`# Kubernetes-managed hosts file (cello: the cell's ${cell.hosts}).`, ...readLines(cell.hosts)]
    : [
        // The kubelet's header, byte for byte: tools and the conformance suite recognize a managed
        // file by this prefix (a hostNetwork pod's header above must NOT start with it).
        '# Kubernetes-managed hosts file.',
        '127.0.0.1\tlocalhost',
        '::1\tlocalhost ip6-localhost ip6-loopback',
        'fe00::0\tip6-localnet',
        'fe00::0\tip6-mcastprefix',
        'fe00::1\tip6-allnodes',
        'fe00::2\tip6-allrouters',
        `${podIP}\t${fqdn ? `${fqdn}\t` : ''}${host}`,
      ];
  const aliases = pod.spec?.hostAliases ?? [];
  if (aliases.length > 0) {
    hosts.push('', '# Entries added by HostAliases.');
    for (const a of aliases) hosts.push(`${a.ip}\t${a.hostnames.join('\t')}`);
  }
  const { resolver: r, warnings } = podResolver(pod, clusterDNS, hostResolv);
  const resolv = [
    ...r.nameservers.map((n) => `nameserver ${n}`),
    ...(r.searches.length ? [`search ${r.searches.join(' ')}`] : []),
    ...(r.options.length ? [`options ${r.options.join(' ')}`] : []),
  ];
  const files = { hosts: join(dir, 'hosts'), resolv: join(dir, 'resolv.conf'), hostname: join(dir, 'hostname') };
  writeIfChanged(files.hosts, hosts.join('\n') + '\n');
  writeIfChanged(files.resolv, resolv.join('\n') + '\n');
  writeIfChanged(files.hostname, host + '\n');
  return { files, warnings };
}

function parseResolvConf(path: string): Resolver {
  const r: Resolver = { nameservers: [], searches: [], options: [] };
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return r; // no resolver on the cell
  }
  for (const line of text.split('\n')) {
    const [k, ...rest] = line.trim().split(/\s+/);
    if (k === 'nameserver' && rest[0]) r.nameservers.push(rest[0]);
    else if (k === 'search' || k === 'domain')
      r.searches = rest; // the last one wins, as in libc
    else if (k === 'options') r.options.push(...rest);
  }
  return r;
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').replace(/\n+$/, '').split('\n');
  } catch {
    return ['127.0.0.1\tlocalhost']; // a cell without a hosts file
  }
}

function unique(xs: string[]): string[] {
  return [...new Set(xs)];
}

// The kubelet keeps the first paths that fit both limits.
function fitSearches(searches: string[]): string[] {
  const out: string[] = [];
  let chars = 0;
  for (const s of searches) {
    const next = chars + (out.length > 0 ? 1 : 0) + s.length;
    if (out.length === MAX_SEARCHES || next > MAX_SEARCH_CHARS) break;
    out.push(s);
    chars = next;
  }
  return out;
}
