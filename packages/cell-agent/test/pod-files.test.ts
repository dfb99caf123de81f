// The pod's /etc/resolv.conf and /etc/hosts, against what the kubelet writes for each dnsPolicy
// (pkg/kubelet/network/dns), from a cell resolver written by the test.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Pod, type ClusterDNS } from '@cello/proto/cell';
import { writePodFiles } from '../src/pod/pod-files.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-podfiles-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hostResolv = join(dir, 'host-resolv.conf');
writeFileSync(hostResolv, '# the cell\nnameserver 169.254.169.253\nsearch ec2.internal\noptions timeout:2\n');

const cluster: ClusterDNS = { nameservers: ['10.96.0.10'], domain: 'cluster.local' };

function files(spec: Partial<Pod['spec']> & object, dns: ClusterDNS | null = cluster) {
  const pod = Pod.fromPartial({ metadata: { name: 'web-1', namespace: 'shop' }, spec });
  const { files: f, warnings } = writePodFiles(join(dir, Math.random().toString(36).slice(2)), pod, '10.88.0.5', dns ?? undefined, hostResolv);
  return { resolv: readFileSync(f.resolv, 'utf8'), hosts: readFileSync(f.hosts, 'utf8'), warnings };
}

describe('pod resolv.conf by dnsPolicy', () => {
  it('ClusterFirst: the cluster DNS, the namespace search paths then the cell own, ndots:5', () => {
    expect(files({}).resolv).toBe('nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local ec2.internal\noptions ndots:5\n');
    expect(files({ dnsPolicy: 'ClusterFirstWithHostNet' }, { nameservers: ['10.0.0.10'], domain: 'corp.example' }).resolv).toBe(
      'nameserver 10.0.0.10\nsearch shop.svc.corp.example svc.corp.example corp.example ec2.internal\noptions ndots:5\n',
    );
  });

  it('ClusterFirst outside a cluster uses the cell resolver; in a cluster without a DNS address, with the kubelet warning', () => {
    const standalone = files({ dnsPolicy: 'ClusterFirst' }, null);
    expect(standalone.resolv).toBe('nameserver 169.254.169.253\nsearch ec2.internal\noptions timeout:2\n');
    expect(standalone.warnings).toEqual([]);
    const r = files({ dnsPolicy: 'ClusterFirst' }, { nameservers: [], domain: 'cluster.local' });
    expect(r.resolv).toBe(standalone.resolv);
    expect(r.warnings).toEqual([
      { reason: 'MissingClusterDNS', message: 'pod: "web-1". ClusterFirst policy specified but no cluster DNS IP configured. Falling back to "Default" policy.' },
    ]);
  });

  it('Default: the cell resolver, even in a cluster', () => {
    const r = files({ dnsPolicy: 'Default' });
    expect(r.resolv).toBe('nameserver 169.254.169.253\nsearch ec2.internal\noptions timeout:2\n');
    expect(r.warnings).toEqual([]);
  });

  it('None: only dnsConfig', () => {
    const r = files({ dnsPolicy: 'None', dnsConfig: { nameservers: ['1.1.1.1'], searches: ['example.com'], options: [{ name: 'ndots', value: '2' }, { name: 'edns0' }] } });
    expect(r.resolv).toBe('nameserver 1.1.1.1\nsearch example.com\noptions ndots:2 edns0\n');
  });

  it('dnsConfig merges into ClusterFirst: nameservers and searches appended without duplicates, options replaced by name', () => {
    const r = files({ dnsConfig: { nameservers: ['10.96.0.10', '8.8.8.8'], searches: ['svc.cluster.local', 'extra.example'], options: [{ name: 'ndots', value: '2' }] } });
    expect(r.resolv).toBe('nameserver 10.96.0.10\nnameserver 8.8.8.8\nsearch shop.svc.cluster.local svc.cluster.local cluster.local ec2.internal extra.example\noptions ndots:2\n');
  });

  it('keeps the kubelet limits: three nameservers, 32 search paths, and says what it dropped', () => {
    const many = Array.from({ length: 40 }, (_, i) => `s${i}.example`);
    const r = files({ dnsConfig: { nameservers: ['1.1.1.1', '2.2.2.2', '3.3.3.3'], searches: many, options: [] } });
    expect(r.resolv).toMatch(/^nameserver 10\.96\.0\.10\nnameserver 1\.1\.1\.1\nnameserver 2\.2\.2\.2\nsearch /);
    expect(/search (.*)\n/.exec(r.resolv)![1]!.split(' ')).toHaveLength(32);
    expect(r.warnings.map((w) => w.reason)).toEqual(['DNSConfigForming', 'DNSConfigForming']);
    expect(r.warnings[0]!.message).toContain('Nameserver limits were exceeded');
    expect(r.warnings[1]!.message).toContain('Search Line limits were exceeded');
  });
});

describe('pod /etc/hosts', () => {
  it('names the pod by hostname and subdomain in the cluster domain, then the host aliases', () => {
    const r = files(
      { hostname: 'db-0', subdomain: 'db', hostAliases: [{ ip: '10.1.2.3', hostnames: ['foo.local', 'bar.local'] }] },
      { nameservers: ['10.0.0.10'], domain: 'corp.example' },
    );
    expect(r.hosts).toContain('10.88.0.5\tdb-0.db.shop.svc.corp.example\tdb-0\n');
    expect(r.hosts).toContain('# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n');
  });

  it("starts with the kubelet's header, by which the conformance suite tells a managed file", () => {
    expect(files({}).hosts.startsWith('# Kubernetes-managed hosts file.\n')).toBe(true);
  });
});

describe('a hostNetwork pod, as the kubelet treats one on the host network', () => {
  const cellHosts = join(dir, 'cell-hosts');
  writeFileSync(cellHosts, '127.0.0.1\tlocalhost\n10.88.0.5\tcell-a\n');
  const hostNet = (spec: Partial<Pod['spec']> & object) => {
    const pod = Pod.fromPartial({ metadata: { name: 'web-1', namespace: 'shop' }, spec: { hostNetwork: true, ...spec } });
    const { files: f } = writePodFiles(join(dir, Math.random().toString(36).slice(2)), pod, '10.88.0.5', cluster, hostResolv, { hosts: cellHosts, hostname: () => 'cell-a' });
    return { resolv: readFileSync(f.resolv, 'utf8'), hosts: readFileSync(f.hosts, 'utf8'), hostname: readFileSync(f.hostname, 'utf8') };
  };

  it("ClusterFirst is the cell's resolver, ClusterFirstWithHostNet the cluster's", () => {
    expect(hostNet({ dnsPolicy: 'ClusterFirst' }).resolv).toBe('nameserver 169.254.169.253\nsearch ec2.internal\noptions timeout:2\n');
    expect(hostNet({ dnsPolicy: 'ClusterFirstWithHostNet' }).resolv).toBe(files({}).resolv);
  });

  it("the cell's hosts file and hostname (not the pod's), then the host aliases", () => {
    const r = hostNet({ hostname: 'ignored-on-host-net', hostAliases: [{ ip: '10.1.2.3', hostnames: ['foo.local'] }] });
    expect(r.hostname).toBe('cell-a\n');
    expect(r.hosts).toContain('127.0.0.1\tlocalhost\n10.88.0.5\tcell-a\n');
    expect(r.hosts).not.toContain('ignored-on-host-net');
    expect(r.hosts).toContain('# Entries added by HostAliases.\n10.1.2.3\tfoo.local\n');
  });

  it("does not start with the managed file's header (the kubelet leaves a host-network pod's file its node's)", () => {
    expect(hostNet({}).hosts.startsWith('# Kubernetes-managed hosts file.')).toBe(false);
  });
});
