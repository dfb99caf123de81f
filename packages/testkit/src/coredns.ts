// Cluster DNS for the Kubernetes harness: CoreDNS (built from the Go module proxy by
// scripts/k8s/build-coredns.sh, cached) with its kubernetes plugin reading the test API server,
// behind the `kube-system/kube-dns` Service at a fixed cluster IP, as kubeadm sets a cluster up.
//
// It runs as a host process, not as a pod on a cell: a pod on a cell cannot reach the harness's
// kube-apiserver, which listens on loopback only. The Service has no selector; its EndpointSlice
// names the address CoreDNS listens on, so pods reach it through their cell's Service proxy
// exactly as they would reach CoreDNS pods.
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './net.js';
import { waitFor } from './wait.js';
import { kill, launch, type KubeApiserver } from './kube.js';

const BUILD_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s', 'build-coredns.sh');

/** The `coredns` binary; builds it on first use (cached afterwards). Fails with the build's error. */
export function corednsBinary(): string {
  const r = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  return join(r.stdout.trim().split('\n').pop()!, 'coredns');
}

export interface ClusterDns {
  /** The kube-dns Service's cluster IP (what pods' resolv.conf names). */
  clusterIP: string;
  /** Where CoreDNS itself listens (UDP and TCP): the kube-dns EndpointSlice's endpoint. */
  address: string;
  port: number;
  domain: string;
  logs(): string;
  stop(): Promise<void>;
}

function ready(port: number): Promise<boolean> {
  return new Promise((done) => {
    const req = get({ host: '127.0.0.1', port, path: '/ready', timeout: 2000 }, (res) => {
      res.resume();
      done(res.statusCode === 200);
    });
    req.on('error', () => done(false));
    req.on('timeout', () => req.destroy());
  });
}

/**
 * Starts CoreDNS for `domain` (default cluster.local) on `address` (not loopback: the API server
 * refuses loopback endpoints, and cells must reach it; see hostAddress()) at a free port, and
 * creates the `kube-system/kube-dns` Service at `clusterIP` (default 10.0.0.10, in the harness's
 * service range) with an EndpointSlice to it. Waits, with a deadline, until CoreDNS has synced
 * with the API server (its ready plugin). stop() ends CoreDNS and deletes the Service.
 */
export async function startClusterDns(kube: KubeApiserver, o: { address: string; clusterIP?: string; domain?: string; timeoutMs?: number }): Promise<ClusterDns> {
  const bin = corednsBinary();
  const clusterIP = o.clusterIP ?? '10.0.0.10';
  const domain = o.domain ?? 'cluster.local';
  const port = await freePort();
  const readyPort = await freePort();
  const corefile = join(kube.dir, 'Corefile');
  // The kubeadm Corefile's server block, with no upstream (forward) and short TTLs so that tests
  // see endpoint changes within seconds.
  await writeFile(
    corefile,
    `.:${port} {
    bind ${o.address}
    errors
    ready 127.0.0.1:${readyPort}
    kubernetes ${domain} in-addr.arpa ip6.arpa {
        kubeconfig ${kube.kubeconfig} test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
`,
  );
  const proc = launch(bin, ['-conf', corefile]);
  const deleteService = async () => {
    await kube.kubectl(['-n', 'kube-system', 'delete', 'service', 'kube-dns', '--ignore-not-found', '--wait=false']);
    await kube.kubectl(['-n', 'kube-system', 'delete', 'endpointslice', 'kube-dns-coredns', '--ignore-not-found', '--wait=false']);
  };
  const stop = async () => {
    await kill(proc);
    await deleteService().catch(() => undefined);
  };
  try {
    const objects = [
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns', 'kubernetes.io/name': 'CoreDNS' } },
        spec: {
          clusterIP,
          ports: [
            { name: 'dns', port: 53, targetPort: port, protocol: 'UDP' },
            { name: 'dns-tcp', port: 53, targetPort: port, protocol: 'TCP' },
          ],
        },
      },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: {
          name: 'kube-dns-coredns',
          namespace: 'kube-system',
          labels: { 'kubernetes.io/service-name': 'kube-dns', 'endpointslice.kubernetes.io/managed-by': 'cello-testkit' },
        },
        addressType: 'IPv4',
        endpoints: [{ addresses: [o.address], conditions: { ready: true } }],
        ports: [
          { name: 'dns', port, protocol: 'UDP' },
          { name: 'dns-tcp', port, protocol: 'TCP' },
        ],
      },
    ];
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: objects.map((x) => JSON.stringify(x)).join('\n') });
    if (applied.code !== 0) throw new Error(`creating the kube-dns Service: ${applied.stderr}`);
    await waitFor(
      `CoreDNS on ${o.address}:${port} to sync with the API server`,
      async () => {
        if (proc.exited) throw new Error(`coredns exited: ${proc.stderr.slice(-3000)}`);
        return ready(readyPort);
      },
      { timeoutMs: o.timeoutMs ?? 30_000, intervalMs: 250 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\ncoredns: ${proc.stderr.slice(-2000)}`);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { clusterIP, address: o.address, port, domain, logs: () => proc.stderr.slice(-4000), stop };
}
