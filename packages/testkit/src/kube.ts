// A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-scheduler +
// kube-controller-manager on loopback free ports, with a throwaway PKI made by `openssl` (cluster CA, serving cert, admin client
// cert, the client cert the API server presents to kubelets, the service-account signing key).
// The binaries come from scripts/k8s/build.sh (built once from the Go module proxy, cached).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './net.js';
import { waitFor } from './wait.js';
import { startEtcd, type EtcdServer } from './etcd.js';

const BUILD_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s', 'build.sh');
const METRICS_SERVER_BUILD_SCRIPT = resolve(dirname(BUILD_SCRIPT), 'build-metrics-server.sh');

const BINARIES = ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubectl'];

/**
 * The controllers the harness's kube-controller-manager runs: what makes Deployments, Jobs,
 * Services and ServiceAccounts work as in a cluster. Not the node-lifecycle controller (it would
 * taint and evict from a virtual node that a test stops on purpose), nor the pod GC.
 */
export const KUBE_CONTROLLERS = [
  'endpointslice-controller',
  'endpointslice-mirroring-controller',
  'deployment-controller',
  'replicaset-controller',
  'job-controller',
  'ttl-after-finished-controller',
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'root-ca-certificate-publisher-controller',
  'garbage-collector-controller',
  'namespace-controller',
];

/**
 * The directory holding kube-apiserver, kube-controller-manager, kube-scheduler and kubectl. Builds them on first use
 * (10+ minutes on a 2-core machine; cached afterwards), so call it from a hook with a generous
 * timeout. Fails with the build's own error, never skips.
 */
export function kubeBinaries(): string {
  const r = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  const dir = r.stdout.trim().split('\n').pop()!;
  for (const b of BINARIES) {
    if (!existsSync(join(dir, b))) throw new Error(`${BUILD_SCRIPT} printed ${dir} but ${b} is not there`);
  }
  return dir;
}

export interface IssuedCert {
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

export interface KubeApiserver {
  /** https://127.0.0.1:PORT */
  server: string;
  /** Admin kubeconfig (system:masters): for kubectl and @kubernetes/client-node. */
  kubeconfig: string;
  binDir: string;
  dir: string;
  caFile: string;
  ca: string;
  /** The client certificate the API server presents to kubelets (CN=kube-apiserver-kubelet-client). */
  kubeletClientCN: string;
  /** The certificate and key the API server presents to kubelets (metrics-server would use its own). */
  kubeletClient: IssuedCert;
  etcd: EtcdServer;
  /** Issues a certificate signed by the cluster CA (serving: IP/DNS SANs; client: CN and O). */
  issueCert(name: string, o: { cn: string; org?: string; ips?: string[]; dns?: string[] }): Promise<IssuedCert>;
  /** Runs kubectl with the admin kubeconfig; resolves with its exit code and output. */
  kubectl(args: string[], o?: { timeoutMs?: number; input?: string }): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Starts a long-running kubectl (logs -f, port-forward, exec); the caller kills it. */
  spawnKubectl(args: string[]): ChildProcess;
  /** Whether kube-controller-manager runs (KUBE_CONTROLLERS). */
  controllerManager: boolean;
  /** The tail of the API server's, the scheduler's and the controller-manager's stderr (for failure messages). */
  logs(): string;
  stop(): Promise<void>;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.error) throw new Error(`openssl is not installed; install it with:\n  apt-get install -y openssl   (or: npm run setup)`);
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

interface Proc {
  child: ChildProcess;
  exited: boolean;
  exit: Promise<void>;
  stderr: string;
}

function launch(cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const p: Proc = { child, exited: false, exit: Promise.resolve(), stderr: '' };
  p.exit = new Promise<void>((r) =>
    child.once('exit', () => {
      p.exited = true;
      r();
    }),
  );
  child.stderr!.on('data', (b: Buffer) => (p.stderr = (p.stderr + b.toString()).slice(-16000)));
  return p;
}

async function kill(p: Proc | undefined): Promise<void> {
  if (!p || p.exited) return;
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 5000);
  await p.exit;
  clearTimeout(t);
}

/**
 * Starts etcd, kube-apiserver (Node,RBAC authorization; client-cert auth; the kubelet client
 * cert so it can reach a kubelet API that trusts the cluster CA), kube-scheduler and
 * kube-controller-manager (KUBE_CONTROLLERS, unless `controllerManager: false`), and waits with
 * deadlines until the API server is ready, the scheduler has started and the controller-manager
 * has made the `default` namespace's ServiceAccount and root CA ConfigMap.
 */
export async function startKubeApiserver(
  o: {
    timeoutMs?: number;
    controllerManager?: boolean;
    /** kube-controller-manager's --controllers (default KUBE_CONTROLLERS); the conformance run wants nearly all. */
    controllers?: string[];
    /**
     * The address the API server advertises (the `default/kubernetes` Service's endpoint), as a
     * cluster's control plane does: one that pods reach, such as this host's own (hostAddress()),
     * which local cells reach through the cello0 bridge. The API server then listens on every
     * address (it can bind only one, and tests keep talking to it on 127.0.0.1). Default:
     * 127.0.0.1, listening on loopback only (pods on cells then do not reach it).
     */
    advertiseAddress?: string;
  } = {},
): Promise<KubeApiserver> {
  const binDir = kubeBinaries();
  const dir = await mkdtemp(join(tmpdir(), 'cello-kube-'));
  let etcd: EtcdServer | undefined;
  let api: Proc | undefined;
  let sched: Proc | undefined;
  let kcm: Proc | undefined;
  const cleanup = async () => {
    await kill(kcm);
    await kill(sched);
    await kill(api);
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    etcd = await startEtcd();
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=cello-test-cluster-ca'], dir);
    openssl(['genrsa', '-out', 'sa.key', '2048'], dir);
    openssl(['rsa', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
    let serial = 1;
    const issueCert = async (name: string, c: { cn: string; org?: string; ips?: string[]; dns?: string[] }): Promise<IssuedCert> => {
      const subj = `/CN=${c.cn}${c.org ? `/O=${c.org}` : ''}`;
      openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subj], dir);
      const sans = [...(c.ips ?? []).map((i) => `IP:${i}`), ...(c.dns ?? []).map((d) => `DNS:${d}`)];
      const ext = [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        `extendedKeyUsage=${sans.length ? 'serverAuth,clientAuth' : 'clientAuth'}`,
        ...(sans.length ? [`subjectAltName=${sans.join(',')}`] : []),
      ];
      await writeFile(join(dir, `${name}.ext`), ext.join('\n') + '\n');
      openssl(
        [
          'x509',
          '-req',
          '-in',
          `${name}.csr`,
          '-CA',
          'ca.crt',
          '-CAkey',
          'ca.key',
          '-set_serial',
          String(++serial + Date.now()),
          '-days',
          '2',
          '-extfile',
          `${name}.ext`,
          '-out',
          `${name}.crt`,
        ],
        dir,
      );
      return {
        certFile: join(dir, `${name}.crt`),
        keyFile: join(dir, `${name}.key`),
        cert: await readFile(join(dir, `${name}.crt`), 'utf8'),
        key: await readFile(join(dir, `${name}.key`), 'utf8'),
      };
    };
    const serving = await issueCert('apiserver', {
      cn: 'kube-apiserver',
      // This host's own addresses too: pods on cells reach the API server there (its advertised
      // address), and verify it as any in-cluster client does.
      ips: [...new Set(['127.0.0.1', '10.0.0.1', ...hostAddresses(), ...(o.advertiseAddress ? [o.advertiseAddress] : [])])],
      dns: ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc'],
    });
    const admin = await issueCert('admin', { cn: 'cello-test-admin', org: 'system:masters' });
    const kubeletClient = await issueCert('kubelet-client', { cn: 'kube-apiserver-kubelet-client', org: 'system:masters' });
    // The aggregation layer's front proxy (for extension API servers such as metrics-server).
    const frontProxy = await issueCert('front-proxy-client', { cn: 'front-proxy-client' });
    const port = await freePort();
    const server = `https://127.0.0.1:${port}`;
    const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
    const kubeconfig = join(dir, 'admin.kubeconfig');
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    await writeFile(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        `- name: test`,
        `  cluster: { server: "${server}", certificate-authority-data: ${b64(ca)} }`,
        'users:',
        `- name: admin`,
        `  user: { client-certificate-data: ${b64(admin.cert)}, client-key-data: ${b64(admin.key)} }`,
        'contexts:',
        '- name: test',
        '  context: { cluster: test, user: admin, namespace: default }',
        'current-context: test',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    api = launch(join(binDir, 'kube-apiserver'), [
      `--etcd-servers=${etcd.endpoint}`,
      `--etcd-prefix=/registry-${port}`,
      `--bind-address=${o.advertiseAddress ? '0.0.0.0' : '127.0.0.1'}`,
      `--advertise-address=${o.advertiseAddress ?? '127.0.0.1'}`,
      `--secure-port=${port}`,
      `--cert-dir=${dir}`,
      `--tls-cert-file=${serving.certFile}`,
      `--tls-private-key-file=${serving.keyFile}`,
      `--client-ca-file=${join(dir, 'ca.crt')}`,
      `--service-account-key-file=${join(dir, 'sa.pub')}`,
      `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
      '--service-account-issuer=https://kubernetes.default.svc',
      '--service-cluster-ip-range=10.0.0.0/24',
      '--authorization-mode=Node,RBAC',
      `--kubelet-client-certificate=${kubeletClient.certFile}`,
      `--kubelet-client-key=${kubeletClient.keyFile}`,
      `--kubelet-certificate-authority=${join(dir, 'ca.crt')}`,
      '--kubelet-preferred-address-types=InternalIP',
      // Aggregated APIs (metrics.k8s.io): the API server proxies to the service's endpoints
      // directly (there is no kube-proxy), presenting the front-proxy client certificate.
      `--requestheader-client-ca-file=${join(dir, 'ca.crt')}`,
      '--requestheader-allowed-names=front-proxy-client',
      '--requestheader-username-headers=X-Remote-User',
      '--requestheader-group-headers=X-Remote-Group',
      '--requestheader-extra-headers-prefix=X-Remote-Extra-',
      `--proxy-client-cert-file=${frontProxy.certFile}`,
      `--proxy-client-key-file=${frontProxy.keyFile}`,
      '--enable-aggregator-routing=true',
      // The harness runs no node-lifecycle controller, so nothing would lift the not-ready
      // taint this plugin puts on new nodes; without it a Ready node is schedulable at once.
      '--disable-admission-plugins=TaintNodesByCondition',
      // As kubeadm's clusters: privileged pods are admitted (a real kubelet in the harness runs
      // some; conformance specs such as the Job pod-failure-policy one create them).
      '--allow-privileged=true',
      '--profiling=false',
      '--v=1',
    ]);
    const deadline = o.timeoutMs ?? 90_000;
    const kctl = (args: string[], ko: { timeoutMs?: number; input?: string } = {}) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolvePromise, reject) => {
        const child = spawn(join(binDir, 'kubectl'), ['--kubeconfig', kubeconfig, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
        child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`kubectl ${args.join(' ')} timed out after ${ko.timeoutMs ?? 30_000} ms; stdout=${stdout} stderr=${stderr}`));
        }, ko.timeoutMs ?? 30_000);
        child.on('exit', (code) => {
          clearTimeout(timer);
          resolvePromise({ code: code ?? -1, stdout, stderr });
        });
        child.stdin.end(ko.input ?? '');
      });
    const apiProc = api;
    await waitFor(
      `kube-apiserver on ${server} to be ready`,
      async () => {
        if (apiProc.exited) throw new Error(`kube-apiserver exited: ${apiProc.stderr.slice(-3000)}`);
        const r = await kctl(['get', '--raw', '/readyz'], { timeoutMs: 5000 });
        return r.code === 0 && r.stdout.trim() === 'ok';
      },
      { timeoutMs: deadline, intervalMs: 250 },
    );
    sched = launch(join(binDir, 'kube-scheduler'), [
      `--kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      '--leader-elect=false',
      '--bind-address=127.0.0.1',
      `--secure-port=${await freePort()}`,
      `--cert-dir=${join(dir, 'scheduler')}`,
      '--v=1',
    ]);
    const schedProc = sched;
    // The scheduler is ready once it has listed nodes/pods; it reports that through its
    // /readyz but that needs its own authn; its log line "Successfully synced" is not stable,
    // so wait until it has started without exiting and its informers are up (a short grace).
    await waitFor(
      'kube-scheduler to start',
      async () => {
        if (schedProc.exited) throw new Error(`kube-scheduler exited: ${schedProc.stderr.slice(-3000)}`);
        return /Starting Kubernetes Scheduler|Attempting to acquire|Successfully/.test(schedProc.stderr);
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    const withKcm = o.controllerManager ?? true;
    if (withKcm) {
      kcm = launch(join(binDir, 'kube-controller-manager'), [
        `--kubeconfig=${kubeconfig}`,
        `--authentication-kubeconfig=${kubeconfig}`,
        `--authorization-kubeconfig=${kubeconfig}`,
        `--controllers=${(o.controllers ?? KUBE_CONTROLLERS).join(',')}`,
        // ServiceAccount tokens (legacy token Secrets) are signed with the key the API server verifies.
        `--service-account-private-key-file=${join(dir, 'sa.key')}`,
        `--root-ca-file=${join(dir, 'ca.crt')}`,
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
        `--secure-port=${await freePort()}`,
        `--cert-dir=${join(dir, 'controller-manager')}`,
        // Tests scale and delete within seconds: no batching of EndpointSlice updates.
        '--endpointslice-updates-batch-period=0s',
        '--v=1',
      ]);
      const started = kcm;
      await waitFor(
        "kube-controller-manager to make the default namespace's ServiceAccount and root CA",
        async () => {
          if (started.exited) throw new Error(`kube-controller-manager exited: ${started.stderr.slice(-3000)}`);
          const sa = await kctl(['get', 'serviceaccount', 'default', '-o', 'name'], { timeoutMs: 5000 });
          const cm = await kctl(['get', 'configmap', 'kube-root-ca.crt', '-o', 'name'], { timeoutMs: 5000 });
          return sa.code === 0 && cm.code === 0;
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      );
    }
    const kcmProc = kcm;
    const handle: KubeApiserver = {
      server,
      kubeconfig,
      binDir,
      dir,
      caFile: join(dir, 'ca.crt'),
      ca,
      kubeletClientCN: 'kube-apiserver-kubelet-client',
      kubeletClient,
      etcd,
      issueCert,
      kubectl: kctl,
      spawnKubectl: (args) => spawn(join(binDir, 'kubectl'), ['--kubeconfig', kubeconfig, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }),
      controllerManager: withKcm,
      logs: () =>
        `--- kube-apiserver ---\n${apiProc.stderr.slice(-4000)}\n--- kube-scheduler ---\n${schedProc.stderr.slice(-4000)}` +
        (kcmProc ? `\n--- kube-controller-manager ---\n${kcmProc.stderr.slice(-4000)}` : ''),
      stop: cleanup,
    };
    return handle;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

export interface MetricsServer {
  /** https://ADDRESS:PORT where it serves (the aggregated metrics.k8s.io API goes there). */
  url: string;
  logs(): string;
  stop(): Promise<void>;
}

/**
 * metrics-server (built from the Go module proxy by scripts/k8s/build-metrics-server.sh, cached),
 * run out of cluster against `kube` and registered as the aggregated `v1beta1.metrics.k8s.io`
 * APIService, so that `kubectl top` works. It scrapes kubelets at their node status port with
 * the API server's kubelet client certificate, verifying their serving certificates with the
 * cluster CA.
 *
 * `address` must not be loopback: the API server refuses Endpoints in 127.0.0.0/8, so it
 * listens on this host's own address (see hostAddress()); the API server reaches it directly
 * (--enable-aggregator-routing). Waits (with a deadline) until the APIService is Available.
 */
export async function startMetricsServer(kube: KubeApiserver, o: { address: string; resolutionSeconds?: number; timeoutMs?: number }): Promise<MetricsServer> {
  if (!kube.controllerManager)
    throw new Error('startMetricsServer needs the harness with kube-controller-manager: it mirrors the Endpoints into the EndpointSlice the API server routes to');
  const r = spawnSync('bash', [METRICS_SERVER_BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${METRICS_SERVER_BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  const bin = join(r.stdout.trim().split('\n').pop()!, 'metrics-server');
  const port = await freePort();
  const serving = await kube.issueCert('metrics-server', { cn: 'metrics-server', ips: [o.address], dns: ['metrics-server.kube-system.svc'] });
  const proc = launch(bin, [
    `--kubeconfig=${kube.kubeconfig}`,
    `--authentication-kubeconfig=${kube.kubeconfig}`,
    `--authorization-kubeconfig=${kube.kubeconfig}`,
    `--requestheader-client-ca-file=${kube.caFile}`,
    '--requestheader-allowed-names=front-proxy-client',
    `--bind-address=${o.address}`,
    `--secure-port=${port}`,
    `--tls-cert-file=${serving.certFile}`,
    `--tls-private-key-file=${serving.keyFile}`,
    '--kubelet-use-node-status-port',
    '--kubelet-preferred-address-types=InternalIP',
    `--kubelet-certificate-authority=${kube.caFile}`,
    `--kubelet-client-certificate=${kube.kubeletClient.certFile}`,
    `--kubelet-client-key=${kube.kubeletClient.keyFile}`,
    `--metric-resolution=${o.resolutionSeconds ?? 10}s`,
    '--kubelet-request-timeout=5s', // must be below the resolution
    '--v=1',
  ]);
  const stop = () => kill(proc);
  try {
    const objects = [
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'metrics-server', namespace: 'kube-system' },
        spec: { ports: [{ name: 'https', port: 443, targetPort: port, protocol: 'TCP' }] },
      },
      // Its EndpointSlice is kube-controller-manager's, mirrored from these Endpoints.
      {
        apiVersion: 'v1',
        kind: 'Endpoints',
        metadata: { name: 'metrics-server', namespace: 'kube-system' },
        subsets: [{ addresses: [{ ip: o.address }], ports: [{ name: 'https', port, protocol: 'TCP' }] }],
      },
      {
        apiVersion: 'apiregistration.k8s.io/v1',
        kind: 'APIService',
        metadata: { name: 'v1beta1.metrics.k8s.io' },
        spec: {
          group: 'metrics.k8s.io',
          version: 'v1beta1',
          service: { name: 'metrics-server', namespace: 'kube-system', port: 443 },
          caBundle: Buffer.from(kube.ca).toString('base64'),
          groupPriorityMinimum: 100,
          versionPriority: 100,
        },
      },
    ];
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: objects.map((x) => JSON.stringify(x)).join('\n') });
    if (applied.code !== 0) throw new Error(`registering metrics-server: ${applied.stderr}`);
    let last = '';
    await waitFor(
      'the metrics.k8s.io APIService to be Available',
      async () => {
        if (proc.exited) throw new Error(`metrics-server exited: ${proc.stderr.slice(-3000)}`);
        const a = await kube.kubectl(['get', 'apiservice', 'v1beta1.metrics.k8s.io', '-o', 'jsonpath={.status.conditions[?(@.type=="Available")]}']);
        last = a.stdout;
        return /"status":"True"/.test(a.stdout);
      },
      { timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 500 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last condition: ${last}\nmetrics-server: ${proc.stderr.slice(-2000)}`);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `https://${o.address}:${port}`, logs: () => proc.stderr.slice(-4000), stop };
}

function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flatMap((addrs) => addrs ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal && !a.address.startsWith('169.254.'))
    .map((a) => a.address);
}

/** This host's first non-loopback IPv4 address (what an Endpoints object may name). */
export function hostAddress(): string {
  const a = hostAddresses()[0];
  if (!a) throw new Error('this host has no non-loopback IPv4 address: the API server cannot reach an aggregated API server here');
  return a;
}

/**
 * Writes a kubeconfig for this cluster that authenticates as someone other than the admin (a
 * ServiceAccount's `{ token }`, or `{ 'client-certificate', 'client-key' }` files from
 * issueCert) and returns its path: how tests check what an RBAC role really allows.
 */
export async function kubeconfigFor(kube: KubeApiserver, name: string, user: Record<string, string>): Promise<string> {
  const file = join(kube.dir, `${name}.kubeconfig`);
  // JSON is YAML: kubectl and loadKubeConfig read it, and testkit needs no YAML library.
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    'current-context': name,
    clusters: [{ name: 'c', cluster: { server: kube.server, 'certificate-authority-data': Buffer.from(kube.ca).toString('base64') } }],
    users: [{ name, user }],
    contexts: [{ name, context: { cluster: 'c', user: name } }],
  };
  await writeFile(file, JSON.stringify(config, null, 2), { mode: 0o600 });
  return file;
}
