// /etc/hosts, /etc/resolv.conf and /etc/hostname for the pod, written once per pod under the
// state dir and bind-mounted into every unit, as the kubelet does.
import { readFileSync, mkdirSync } from 'node:fs';
import { writeIfChanged } from '../runtime/files.js';
import { join } from 'node:path';
import type { Pod } from '@cello/proto/cell';

export function podHostname(pod: Pod): string {
  return (pod.spec?.hostname || pod.metadata?.name || 'pod').slice(0, 63);
}

export function writePodFiles(dir: string, pod: Pod, podIP: string, hostResolv = '/etc/resolv.conf'): { hosts: string; resolv: string; hostname: string } {
  mkdirSync(dir, { recursive: true });
  const host = podHostname(pod);
  const fqdn = pod.spec?.subdomain ? `${host}.${pod.spec.subdomain}.${pod.metadata?.namespace || 'default'}.svc.cluster.local` : '';
  const hosts = [
    '# Kubernetes-managed hosts file (cello).',
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
  const policy = pod.spec?.dnsPolicy || 'ClusterFirst';
  let nameservers: string[] = [];
  let searches: string[] = [];
  let options: string[] = [];
  if (policy !== 'None') {
    let text = '';
    try {
      text = readFileSync(hostResolv, 'utf8');
    } catch {
      /* no host resolver config */
    }
    for (const line of text.split('\n')) {
      const [k, ...rest] = line.trim().split(/\s+/);
      if (k === 'nameserver' && rest[0]) nameservers.push(rest[0]);
      else if (k === 'search') searches = rest;
      else if (k === 'options') options = rest;
    }
  }
  const dc = pod.spec?.dnsConfig;
  if (dc) {
    nameservers = [...nameservers, ...dc.nameservers].slice(0, 3);
    searches = [...new Set([...searches, ...dc.searches])];
    const opts = new Map(options.map((o) => [o.split(':')[0]!, o] as [string, string]));
    for (const o of dc.options) opts.set(o.name, o.value !== undefined ? `${o.name}:${o.value}` : o.name);
    options = [...opts.values()];
  }
  const resolv = [
    ...nameservers.map((n) => `nameserver ${n}`),
    ...(searches.length ? [`search ${searches.join(' ')}`] : []),
    ...(options.length ? [`options ${options.join(' ')}`] : []),
  ];
  const out = { hosts: join(dir, 'hosts'), resolv: join(dir, 'resolv.conf'), hostname: join(dir, 'hostname') };
  writeIfChanged(out.hosts, hosts.join('\n') + '\n');
  writeIfChanged(out.resolv, resolv.join('\n') + '\n');
  writeIfChanged(out.hostname, host + '\n');
  return out;
}
