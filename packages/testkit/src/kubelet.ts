// A real kubelet (v1.34.4, built by scripts/k8s/build.sh with the control plane) for tests: it
// registers a Node with the harness's API server (startKubeApiserver) and drives a CRI runtime
// given by its socket (cello-cri, containerd). Everything it owns lives under one temporary
// directory: its root dir, pod log dir, kubeconfig, certificates and configuration.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { waitFor } from './wait.js';
import { hostAddress, kubeBinaries, type KubeApiserver } from './kube.js';

export interface KubeletTaint {
  key: string;
  value?: string;
  effect: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
}

export interface StartKubeletOptions {
  /** The harness's control plane: its CA signs the kubelet's client and serving certificates. */
  apiserver: KubeApiserver;
  /** The CRI socket: a path or `unix:///path`. */
  runtimeEndpoint: string;
  /** The image service's socket (default: the runtime's). */
  imageEndpoint?: string;
  /** The Node's name (a DNS subdomain); the kubelet authenticates as system:node:NAME. */
  nodeName: string;
  /** Taints the Node registers with (`--register-with-taints`). */
  taints?: KubeletTaint[];
  labels?: Record<string, string>;
  /** Must match the runtime's (cello-cri answers RuntimeConfig with cgroupfs; containerd's runc default is cgroupfs too). */
  cgroupDriver?: 'cgroupfs' | 'systemd';
  /**
   * The address the kubelet serves on and reports as the Node's InternalIP (the API server reaches
   * it there for logs and exec). Default: this host's own address (hostAddress()): a kubelet
   * refuses a loopback node IP ("nodeIP can't be loopback address") and then reports no address.
   */
  nodeIp?: string;
  /** `--runtime-request-timeout` (default 2m, the kubelet's). */
  runtimeRequestTimeout?: string;
  /** The Node's clusterDNS (the kubelet writes it into pods' resolv.conf). */
  clusterDns?: string[];
  /**
   * `--root-dir` (created if missing, removed by stop()); default: inside the kubelet's temporary
   * directory. cello-cri needs to know it before the kubelet starts (its --kubelet-pods-dir).
   */
  rootDir?: string;
  /** How long to wait for the Node to be Ready (default 90 s). */
  readyTimeoutMs?: number;
}

export interface Kubelet {
  nodeName: string;
  /** The temporary directory holding everything of this kubelet. */
  dir: string;
  /** `--root-dir`: pods' volumes live under ROOT/pods/UID. */
  rootDir: string;
  /** Where the kubelet asks the runtime to write container logs (podLogsDir). */
  podLogsDir: string;
  /** The kubelet API's port (on nodeIp). */
  port: number;
  /** The tail of the kubelet's log (for failure messages). */
  logs(): string;
  /** Stops the kubelet (the runtime's containers are the runtime's to end), deletes its Node, unmounts and removes its directory. */
  stop(): Promise<void>;
}

const SOCKET_URL = (s: string) => (s.startsWith('unix://') ? s : `unix://${s}`);

/** The kubelet binary, built with the control plane by scripts/k8s/build.sh (cached). */
export function kubeletBinary(): string {
  const bin = join(kubeBinaries(), 'kubelet');
  if (!existsSync(bin)) throw new Error(`scripts/k8s/build.sh did not build ${bin}`);
  return bin;
}

/** Mount points at or under `root` (deepest first), from /proc/self/mountinfo. */
function mountsUnder(root: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === root || m.startsWith(root + '/')))
    .map((m) => m.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
}

/**
 * Starts a kubelet as root against `apiserver` and the CRI at `runtimeEndpoint`, and waits (with a
 * deadline) until its Node is Ready. It authenticates with a client certificate for
 * system:node:NAME (group system:nodes, so the API server's Node authorizer scopes it to its own
 * pods' objects); it serves its API on `nodeIp` with a certificate from the same CA (the API
 * server verifies it with --kubelet-certificate-authority) and trusts only that CA's client
 * certificates (the API server's kubelet client). What this shared host needs: no QoS cgroups and
 * no node-allocatable enforcement (hybrid cgroups, other tenants), swap allowed, a cgroup driver
 * matching the runtime, eviction thresholds that a busy test disk does not cross, and no image GC.
 */
export async function startKubelet(o: StartKubeletOptions): Promise<Kubelet> {
  const bin = kubeletBinary();
  const kube = o.apiserver;
  const name = o.nodeName;
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) throw new Error(`nodeName ${JSON.stringify(name)} is not a DNS subdomain`);
  const nodeIp = o.nodeIp ?? hostAddress();
  const dir = await mkdtemp(join(tmpdir(), `cello-kubelet-${name}-`));
  const rootDir = o.rootDir ?? join(dir, 'root');
  const podLogsDir = join(dir, 'pod-logs');
  await mkdir(rootDir, { recursive: true });
  await mkdir(podLogsDir, { recursive: true });
  await mkdir(join(dir, 'volume-plugins'), { recursive: true });
  const client = await kube.issueCert(`kubelet-${name}`, { cn: `system:node:${name}`, org: 'system:nodes' });
  const serving = await kube.issueCert(`kubelet-serving-${name}`, { cn: name, ips: [nodeIp], dns: [name] });
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(
    kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      `- name: test`,
      `  cluster: { server: "${kube.server}", certificate-authority-data: ${b64(kube.ca)} }`,
      'users:',
      `- name: node`,
      `  user: { client-certificate-data: ${b64(client.cert)}, client-key-data: ${b64(client.key)} }`,
      'contexts:',
      '- name: test',
      '  context: { cluster: test, user: node }',
      'current-context: test',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const port = await freePort();
  const config = {
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    kind: 'KubeletConfiguration',
    address: nodeIp,
    port,
    readOnlyPort: 0,
    healthzPort: 0,
    tlsCertFile: serving.certFile,
    tlsPrivateKeyFile: serving.keyFile,
    authentication: { anonymous: { enabled: false }, webhook: { enabled: false }, x509: { clientCAFile: kube.caFile } },
    // Only the cluster CA's client certificates get in (the API server's kubelet client, system:masters).
    authorization: { mode: 'AlwaysAllow' },
    containerRuntimeEndpoint: SOCKET_URL(o.runtimeEndpoint),
    imageServiceEndpoint: SOCKET_URL(o.imageEndpoint ?? o.runtimeEndpoint),
    runtimeRequestTimeout: o.runtimeRequestTimeout ?? '2m',
    cgroupDriver: o.cgroupDriver ?? 'cgroupfs',
    cgroupsPerQOS: false,
    enforceNodeAllocatable: [],
    failSwapOn: false,
    podLogsDir,
    volumePluginDir: join(dir, 'volume-plugins'),
    registerNode: true,
    registerWithTaints: o.taints ?? [],
    ...(o.clusterDns ? { clusterDNS: o.clusterDns, clusterDomain: 'cluster.local' } : {}),
    // A shared CI disk is often fuller than the defaults allow: evict only at the very end.
    evictionHard: { 'memory.available': '1Mi', 'nodefs.available': '1%', 'nodefs.inodesFree': '1%', 'imagefs.available': '1%' },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    // Tests wait on status: report it promptly.
    nodeStatusUpdateFrequency: '5s',
    syncFrequency: '10s',
  };
  const configFile = join(dir, 'config.json');
  await writeFile(configFile, JSON.stringify(config, null, 2));
  const args = [
    `--config=${configFile}`,
    `--kubeconfig=${kubeconfig}`,
    `--root-dir=${rootDir}`,
    `--cert-dir=${join(dir, 'pki')}`,
    `--hostname-override=${name}`,
    `--node-ip=${nodeIp}`,
    ...(o.labels && Object.keys(o.labels).length
      ? [
          `--node-labels=${Object.entries(o.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(',')}`,
        ]
      : []),
    '--v=2',
  ];
  let log = '';
  let exited = false;
  const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  const onData = (b: Buffer) => (log = (log + b.toString()).slice(-64_000));
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(t);
    }
    await kube.kubectl(['delete', 'node', name, '--ignore-not-found', '--wait=false'], { timeoutMs: 15_000 }).catch(() => undefined);
    // Secret and projected volumes are tmpfs mounts under the root dir.
    for (const m of [...mountsUnder(dir), ...(o.rootDir ? mountsUnder(o.rootDir) : [])]) spawnSync('umount', ['-l', m]);
    await rm(dir, { recursive: true, force: true });
    if (o.rootDir) await rm(o.rootDir, { recursive: true, force: true });
  };
  try {
    let last = '';
    await waitFor(
      `the kubelet's Node ${name} to be Ready`,
      async () => {
        if (exited) throw new Error(`the kubelet exited: ${log.slice(-4000)}`);
        const r = await kube.kubectl(['get', 'node', name, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")]}'], { timeoutMs: 10_000 });
        last = r.stdout || r.stderr;
        return r.code === 0 && /"status":"True"/.test(r.stdout);
      },
      { timeoutMs: o.readyTimeoutMs ?? 90_000, intervalMs: 500 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last Ready condition: ${last}\n--- kubelet:\n${log.slice(-4000)}`);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodeName: name, dir, rootDir, podLogsDir, port, logs: () => log, stop };
}
