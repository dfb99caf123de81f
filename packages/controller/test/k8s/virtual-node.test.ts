// The controller in a cluster, end to end: a real kube-apiserver and kube-scheduler (built from
// the Go module proxy by scripts/k8s/build.sh, cached), the controller daemon with the local
// provider (real cell-agent processes and runc), the virtual node in front of it, and the real
// kubectl. Nothing is mocked: pods are scheduled by the real scheduler onto the virtual node,
// run on local cells, and kubectl logs/exec/port-forward go API server -> kubelet API (HTTPS,
// client certs, SPDY/3.1) -> controller -> cell agent.
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpsRequest } from 'node:https';
import type { ChildProcess } from 'node:child_process';
import {
  freePort,
  hostAddress,
  kubeconfigFor,
  pushBusybox,
  startKubeApiserver,
  startMetricsServer,
  startRegistry,
  waitFor,
  type KubeApiserver,
  type MetricsServer,
  type RegistryServer,
} from '@cello/testkit';
import { CellState } from '@cello/proto/controller';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir, totalmem } from 'node:os';
import { execFileSync, spawn } from 'node:child_process';
import { join, dirname, resolve } from 'node:path';
import { parse } from 'yaml';
import { httpGet, startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { KubeCluster } from '../helpers/kube-cluster.js';
import { kubePods } from '../helpers/kube-pods.js';
import { wsExec } from '../helpers/ws-exec.js';
import { startVirtualNode } from '../../src/k8s/index.js';
import { buildPodManifest } from '../../src/k8s/node/manifest.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { createLogger } from '../../src/obs/logger.js';
import { parseConfig } from '../../src/config.js';
import { parseAwsProviderConfig } from '../../src/providers/aws/index.js';
import { fileURLToPath } from 'node:url';

const DEPLOY = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'deploy', 'base');

const NODE = 'cello-vn';
const PULL_PASSWORD = `pw-${Math.random().toString(36).slice(2)}`;
let privateRegistry: RegistryServer;
let privateImage: string;
const MAX_CELLS = 10;

interface KPod {
  metadata: { name: string; uid: string; deletionTimestamp?: string };
  spec: { nodeName?: string };
  status: {
    phase?: string;
    podIP?: string;
    hostIP?: string;
    startTime?: string;
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
    containerStatuses?: { name: string; ready: boolean; restartCount: number; state: { running?: { startedAt: string } }; image: string }[];
  };
}

const podYaml = (name: string, image: string, o: { tolerate: boolean; command: string; grace?: number }) => `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  labels: { app: ${name} }
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: ${o.grace ?? 2}
  nodeSelector: { type: virtual-kubelet }
  ${o.tolerate ? 'tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]' : ''}
  containers:
  - name: main
    image: ${image}
    command: ["sh", "-c", ${JSON.stringify(o.command)}]
    env: [{ name: FROM_CM, valueFrom: { configMapKeyRef: { name: settings, key: greeting } } }]
    ports: [{ containerPort: 8080 }]
`;

let registry: Registry;
let kube: KubeApiserver;
let cl: KubeCluster;
let metricsServer: MetricsServer | undefined;
let kubeDnsIP: string;

/** Cells the local provider holds (not ending): what its capacity() counts as used. */
function liveCells(): number {
  return cl.cellDirs().filter((d) => {
    try {
      return !(JSON.parse(readFileSync(join(cl.cellsRoot, d, 'instance.json'), 'utf8')) as { terminating?: boolean }).terminating;
    } catch {
      return false;
    }
  }).length;
}

/**
 * The node's allocatable pods converge on the provider's headroom plus the pods bound to it
 * (the scheduler subtracts those itself), following cells as they come and go.
 */
async function allocatablePods(what: string, onNode: number): Promise<void> {
  let seen = '';
  await waitFor(
    `allocatable pods of ${what} to be ${MAX_CELLS} - live cells + ${onNode}`,
    async () => {
      const n = JSON.parse((await kube.kubectl(['get', 'node', NODE, '-o', 'json'])).stdout) as { status: { allocatable: { pods: string } } };
      const want = String(MAX_CELLS - liveCells() + onNode);
      seen = `${n.status.allocatable.pods} (want ${want})`;
      return n.status.allocatable.pods === want;
    },
    { timeoutMs: 20_000, intervalMs: 500 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last seen ${seen}`);
  });
}

const { getPod, waitPod } = kubePods<KPod>(
  () => kube,
  () => cl.controllerLog,
  { timeoutMs: 60_000 },
);

beforeAll(async () => {
  registry = await startFixtureRegistry();
  // A private registry (HTTP Basic auth) for the imagePullSecrets test.
  const htdir = mkdtempSync(join(tmpdir(), 'cello-htpasswd-'));
  const hash = execFileSync('python3', ['-c', `import crypt; print(crypt.crypt(${JSON.stringify(PULL_PASSWORD)}, crypt.mksalt(crypt.METHOD_BLOWFISH)))`], {
    encoding: 'utf8',
  }).trim();
  writeFileSync(join(htdir, 'htpasswd'), `puller:${hash}\n`);
  privateRegistry = await startRegistry({ htpasswd: join(htdir, 'htpasswd') });
  privateImage = await pushBusybox(privateRegistry, 'private/busybox:1', { creds: `puller:${PULL_PASSWORD}` });
  kube = await startKubeApiserver();
  // The harness's kube-controller-manager has made the default ServiceAccount and the
  // kube-root-ca.crt ConfigMap (projected kube-api-access volumes read it).
  await kube.kubectl(['create', 'namespace', 'cello-system']);
  await kube.kubectl(['create', 'configmap', 'settings', '--from-literal=greeting=hello-from-configmap']);
  // The cluster DNS Service pods' resolv.conf names (CoreDNS itself is not needed for that).
  await kube.kubectl(['-n', 'kube-system', 'create', 'service', 'clusterip', 'kube-dns', '--tcp=53:53']);
  kubeDnsIP = (await kube.kubectl(['-n', 'kube-system', 'get', 'service', 'kube-dns', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim();
  const serving = await kube.issueCert('kubelet-serving', { cn: NODE, ips: ['127.0.0.1'], dns: [NODE] });
  cl = new KubeCluster({ registry, warm: 1, healthSeconds: 5, gcIntervalSeconds: 2, retainFinishedSeconds: 0, insecureRegistries: [privateRegistry.host] }, kube, serving, {
    nodeName: NODE,
    maxCells: MAX_CELLS,
  });
  // metrics-server (for kubectl top) comes up beside the controller.
  [metricsServer] = await Promise.all([startMetricsServer(kube, { address: hostAddress(), resolutionSeconds: 10 }), cl.start()]);
  await waitFor('the virtual node to register', async () => (await kube.kubectl(['get', 'node', NODE])).code === 0, { timeoutMs: 30_000, intervalMs: 250 }).catch((err: Error) => {
    throw new Error(`${err.message}\ncontroller log:\n${cl.controllerLog.slice(-3000)}`);
  });
}, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries (scripts/k8s/build.sh)

afterAll(async () => {
  await metricsServer?.stop();
  await cl?.stop();
  await kube?.stop();
  await registry?.server.stop();
  await privateRegistry?.stop();
}, 60_000);

describe('virtual node against a real kube-apiserver', () => {
  it('registers a Ready node with its labels, taint, addresses and kubelet endpoint, and renews its Lease', async () => {
    await waitFor(
      'node Ready',
      async () =>
        (JSON.parse((await kube.kubectl(['get', 'node', NODE, '-o', 'json'])).stdout) as { status: { conditions?: { type: string; status: string }[] } }).status.conditions?.some(
          (c) => c.type === 'Ready' && c.status === 'True',
        ),
      { timeoutMs: 10_000, intervalMs: 250 },
    );
    const r = await kube.kubectl(['get', 'node', NODE, '-o', 'json']);
    expect(r.stderr).toBe('');
    const node = JSON.parse(r.stdout) as {
      metadata: { labels: Record<string, string> };
      spec: { taints: { key: string; value: string; effect: string }[] };
      status: {
        conditions: { type: string; status: string }[];
        addresses: { type: string; address: string }[];
        daemonEndpoints: { kubeletEndpoint: { Port: number } };
        allocatable: Record<string, string>;
        capacity: Record<string, string>;
      };
    };
    expect(node.metadata.labels).toMatchObject({
      type: 'virtual-kubelet',
      'kubernetes.io/role': 'agent',
      'kubernetes.io/os': 'linux',
      'kubernetes.io/arch': 'amd64',
      'cello.dev/arch-amd64': 'true',
      'cello.dev/provider': 'local',
    });
    // Local cells run this host's architecture, and nothing else.
    expect(node.metadata.labels['cello.dev/arch-arm64']).toBeUndefined();
    expect(node.spec.taints).toEqual([{ key: 'virtual-kubelet.io/provider', value: 'cello', effect: 'NoSchedule' }]);
    expect(node.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(node.status.addresses).toContainEqual({ type: 'InternalIP', address: '127.0.0.1' });
    expect(node.status.daemonEndpoints.kubeletEndpoint.Port).toBe(cl.kubeletPort);
    // Sized by the local provider's capacity(): the host's cores and memory, maxCells cells.
    const totalMiB = Math.floor(totalmem() / 2 ** 20);
    expect(node.status.capacity).toMatchObject({ cpu: String(availableParallelism()), memory: `${totalMiB}Mi`, pods: String(MAX_CELLS) });
    await allocatablePods('the idle node', 0);
    const lease = async () =>
      JSON.parse((await kube.kubectl(['-n', 'kube-node-lease', 'get', 'lease', NODE, '-o', 'json'])).stdout) as { spec: { holderIdentity: string; renewTime: string } };
    const first = await lease();
    expect(first.spec.holderIdentity).toBe(NODE);
    await waitFor('the lease to be renewed', async () => (await lease()).spec.renewTime !== first.spec.renewTime, { timeoutMs: 15_000, intervalMs: 500 });
    // Replica election: this controller holds the virtual node's Lease.
    const holder = JSON.parse((await kube.kubectl(['-n', 'cello-system', 'get', 'lease', 'cello-virtual-node', '-o', 'json'])).stdout) as { spec: { holderIdentity: string } };
    expect(holder.spec.holderIdentity).toMatch(/-\d+$/);
  });

  it('runs a tolerating pod on a cell: Running with status written back; logs, exec, port-forward through the API server; delete ends the cell', async () => {
    const web = podYaml('web', registry.image, {
      tolerate: true,
      command:
        'echo "greeting=$FROM_CM"; echo "svc=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; mkdir -p /www && echo hello-through-kubectl > /www/index.html && exec httpd -f -p 8080 -h /www',
    });
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: web });
    expect(applied.stderr).toBe('');
    const pod = await waitPod('web', 'Running', (p) => p.status.phase === 'Running' && !!p.status.containerStatuses?.[0]?.state.running, 90_000);
    expect(pod.spec.nodeName).toBe(NODE);
    expect(pod.status.podIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(pod.status.hostIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/); // its cell's address
    expect(pod.status.startTime).toBeTruthy();
    expect(pod.status.containerStatuses![0]).toMatchObject({ name: 'main', restartCount: 0, image: registry.image });
    // The scheduler's condition survives our status patches (strategic merge by type).
    expect(pod.status.conditions?.find((c) => c.type === 'PodScheduled')?.status).toBe('True');
    // Where the pod is on its way to running, as the controller keeps it (docs/operations.md).
    const progressed = await waitPod(
      'web',
      'with its progress Running',
      (p) => p.status.conditions?.some((c) => c.type === 'cello.dev/CellProgress' && c.status === 'True') ?? false,
    );
    expect(progressed.status.conditions?.find((c) => c.type === 'cello.dev/CellProgress')).toMatchObject({ reason: 'Running', message: 'running' });
    const cells = await cl.cells();
    expect(cells.some((c) => c.state === CellState.CELL_STATE_BOUND && c.pod?.name === 'web')).toBe(true);
    // The node's size follows: its cell (and the warm pool's refill) used, the pod bound here.
    await allocatablePods('the node running web', 1);

    // kubectl logs: API server -> kubelet /containerLogs over HTTPS with its client certificate.
    const logs = await waitFor(
      'kubectl logs',
      async () => {
        const r = await kube.kubectl(['logs', 'web']);
        return r.code === 0 && r.stdout.includes('svc=') ? r : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 500 },
    );
    expect(logs.stdout).toContain('greeting=hello-from-configmap');
    // As on any node: the default/kubernetes Service, not the kubeconfig's server.
    const kubernetesIP = (await kube.kubectl(['get', 'service', 'kubernetes', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim();
    expect(kubernetesIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(logs.stdout).toContain(`svc=${kubernetesIP}:443`);
    const tail = await kube.kubectl(['logs', 'web', '--tail=1', '--timestamps']);
    expect(tail.stdout).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z svc=/);
    expect(tail.stdout.trim().split('\n')).toHaveLength(1);
    // limitBytes, as the kubelet: the first bytes of what is selected (kubectl logs --limit-bytes), timestamps included.
    expect((await kube.kubectl(['logs', 'web', '--limit-bytes=1'])).stdout).toBe(logs.stdout.slice(0, 1));
    expect((await kube.kubectl(['logs', 'web', '--limit-bytes=9'])).stdout).toBe(logs.stdout.slice(0, 9));
    expect((await kube.kubectl(['logs', 'web', '--tail=1', '--limit-bytes=6'])).stdout).toBe(`svc=${kubernetesIP}`.slice(0, 6));
    expect((await kube.kubectl(['logs', 'web', '--tail=1', '--timestamps', '--limit-bytes=5'])).stdout).toBe(tail.stdout.slice(0, 5));

    // kubectl exec: SPDY/3.1 between the API server and the kubelet API; exit codes come back.
    const ex = await kube.kubectl(['exec', 'web', '--', 'sh', '-c', 'cat /www/index.html; echo to-stderr >&2; exit 3'], { timeoutMs: 30_000 });
    expect(ex.stdout).toBe('hello-through-kubectl\n');
    expect(ex.stderr).toContain('to-stderr');
    expect(ex.code).toBe(3);
    const stdin = await kube.kubectl(['exec', '-i', 'web', '--', 'sh', '-c', 'tr a-z A-Z'], { input: 'piped through stdin\n', timeoutMs: 30_000 });
    expect(stdin).toMatchObject({ code: 0, stdout: 'PIPED THROUGH STDIN\n' });

    // exec over WebSocket: the API server proxies the upgrade of a protocol it does not translate
    // (all but v5) to the kubelet API as it is, as for the e2e suite's `channel.k8s.io`.
    const admin = await kube.issueCert('ws-exec-admin', { cn: 'ws-exec-admin', org: 'system:masters' });
    const adminTls = { ca: kube.ca, cert: admin.cert, key: admin.key };
    const execUrl = (command: string[], extra = '') =>
      `${kube.server.replace(/^https:/, 'wss:')}/api/v1/namespaces/default/pods/web/exec?stdout=1&stderr=1${extra}&${command.map((c) => `command=${encodeURIComponent(c)}`).join('&')}`;
    const v1 = await wsExec(execUrl(['echo', 'remote execution test']), { protocols: ['channel.k8s.io'], tls: adminTls });
    expect(v1).toMatchObject({ protocol: 'channel.k8s.io', stdout: 'remote execution test\n', stderr: '', error: '' });
    // The kubelet's first message: an empty one on stdout, the stream is up.
    expect(v1.messages[0]).toEqual([1, 0]);
    const v4 = await wsExec(execUrl(['sh', '-c', 'echo out; echo err >&2; exit 3']), { protocols: ['v4.channel.k8s.io'], tls: adminTls });
    expect(v4).toMatchObject({ protocol: 'v4.channel.k8s.io', stdout: 'out\n', stderr: 'err\n' });
    expect(JSON.parse(v4.error)).toMatchObject({ status: 'Failure', reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: '3' }] } });
    const b64 = await wsExec(execUrl(['head', '-c', '5'], '&stdin=1'), { protocols: ['v4.base64.channel.k8s.io'], tls: adminTls, stdin: 'hello, world' });
    expect(b64).toMatchObject({ protocol: 'v4.base64.channel.k8s.io', stdout: 'hello' });
    expect(JSON.parse(b64.error)).toMatchObject({ status: 'Success' });
    // v5 (the API server translates it to SPDY; here straight to the kubelet API): stdin closed with [255, 0].
    const v5 = await wsExec(`wss://127.0.0.1:${cl.kubeletPort}/exec/default/web/main?input=1&output=1&command=tr&command=a-z&command=A-Z`, {
      protocols: ['v5.channel.k8s.io'],
      tls: { ca: kube.ca, servername: NODE, cert: kube.kubeletClient.cert, key: kube.kubeletClient.key },
      stdin: 'closed by v5\n',
    });
    expect(v5).toMatchObject({ protocol: 'v5.channel.k8s.io', stdout: 'CLOSED BY V5\n' });
    expect(JSON.parse(v5.error)).toMatchObject({ status: 'Success' });

    // Cluster networking on the cell: resolv.conf names kube-dns with the namespace's search
    // paths, and a Service selecting the pod (its EndpointSlice written by the harness's
    // kube-controller-manager) answers on its cluster IP from inside the pod.
    const resolv = await kube.kubectl(['exec', 'web', '--', 'cat', '/etc/resolv.conf']);
    expect(resolv.stdout).toContain(`nameserver ${kubeDnsIP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local`);
    expect(resolv.stdout).toContain('options ndots:5');
    const svc = await kube.kubectl(['apply', '-f', '-'], {
      input: `apiVersion: v1
kind: Service
metadata: { name: web }
spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }] }
`,
    });
    expect(svc.code, svc.stderr).toBe(0);
    const clusterIP = (await kube.kubectl(['get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim();
    let last = '';
    await waitFor(
      'the Service to answer on its cluster IP inside the pod',
      async () => {
        // (busybox-static's wget crashes in static glibc; nc speaks the request instead.)
        const r = await kube.kubectl(['exec', 'web', '--', 'sh', '-c', `printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${clusterIP} 80`], { timeoutMs: 15_000 });
        last = `${r.code} ${r.stdout} ${r.stderr}`;
        return r.code === 0 && r.stdout.startsWith('HTTP/1.') && r.stdout.endsWith('\r\n\r\nhello-through-kubectl\n');
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}: last: ${last}\n${cl.controllerLog
          .split('\n')
          .filter((l) => /[Ss]ervice/.test(l))
          .slice(-10)
          .join('\n')}`,
      );
    });
    await kube.kubectl(['delete', 'service', 'web']);

    // kubectl exec -it: a scripted terminal session (script(1) gives kubectl a pty), with resize.
    const tty = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const cmd = `${join(kube.binDir, 'kubectl')} --kubeconfig ${kube.kubeconfig} exec -it web -- sh`;
      const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.on('exit', (code) => {
        clearTimeout(t);
        resolve({ code, out });
      });
      setTimeout(() => child.stdin.write('test -t 0 && echo "tty=$((6*7))"\n'), 1500);
      setTimeout(() => child.stdin.write('exit 5\n'), 3000);
    });
    expect(tty.out).toContain('tty=42');
    expect(tty.code).toBe(5);

    // kubectl logs -f follows new output.
    const follow = kube.spawnKubectl(['logs', '-f', 'web']);
    let followed = '';
    follow.stdout!.on('data', (b: Buffer) => (followed += b.toString()));
    try {
      await waitFor('logs -f to print the existing lines', () => followed.includes('svc='), { timeoutMs: 15_000, intervalMs: 100 });
      // A line written by exec into the container's stdout (PID 1's fd) shows up in the follow.
      await kube.kubectl(['exec', 'web', '--', 'sh', '-c', 'echo followed-line > /proc/1/fd/1']);
      await waitFor('logs -f to print a new line', () => followed.includes('followed-line'), { timeoutMs: 15_000, intervalMs: 100 });
    } finally {
      follow.kill('SIGTERM');
    }

    // Restarting the controller (and with it the virtual node) leaves the running pod alone.
    const before = (await getPod('web'))!;
    await cl.stopController();
    await cl.start();
    await waitFor(
      'the virtual node to lead again',
      async () => {
        const l = JSON.parse((await kube.kubectl(['-n', 'kube-node-lease', 'get', 'lease', NODE, '-o', 'json'])).stdout) as { spec: { renewTime: string } };
        return Date.parse(l.spec.renewTime) > Date.now() - 5000;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    const after = await waitPod('web', 'still Running after the restart', (p) => p.status.phase === 'Running', 20_000);
    expect(after.metadata.uid).toBe(before.metadata.uid);
    expect(after.status.containerStatuses![0]!.restartCount).toBe(0);
    expect(after.status.containerStatuses![0]!.state.running?.startedAt).toBe(before.status.containerStatuses![0]!.state.running?.startedAt);
    expect(after.status.podIP).toBe(before.status.podIP);
    expect((await kube.kubectl(['exec', 'web', '--', 'cat', '/www/index.html'])).stdout).toBe('hello-through-kubectl\n');

    // kubectl port-forward.
    const local = await freePort();
    const pf: ChildProcess = kube.spawnKubectl(['port-forward', 'pod/web', `${local}:8080`]);
    let pfOut = '';
    pf.stdout!.on('data', (b: Buffer) => (pfOut += b.toString()));
    pf.stderr!.on('data', (b: Buffer) => (pfOut += b.toString()));
    try {
      await waitFor('port-forward to listen', () => pfOut.includes('Forwarding from'), { timeoutMs: 20_000, intervalMs: 100 });
      expect(await httpGet(local)).toBe('hello-through-kubectl\n');
      expect(await httpGet(local)).toBe('hello-through-kubectl\n');
    } catch (err) {
      throw new Error(`${(err as Error).message}\nkubectl port-forward: ${pfOut}`);
    } finally {
      pf.kill('SIGTERM');
    }

    // Resource usage for metrics-server / kubectl top: the kubelet API called directly, as
    // metrics-server does (the API server's node proxy refuses loopback addresses).
    const kget = (path: string, withCert = true) =>
      new Promise<{ code: number; body: string }>((resolve, reject) => {
        const req = httpsRequest(
          {
            host: '127.0.0.1',
            port: cl.kubeletPort,
            path,
            ca: kube.ca,
            servername: NODE,
            ...(withCert ? { cert: kube.kubeletClient.cert, key: kube.kubeletClient.key } : {}),
            timeout: 10_000,
          },
          (res) => {
            let body = '';
            res.on('data', (b: Buffer) => (body += b.toString()));
            res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
          },
        );
        req.on('error', reject);
        req.end();
      });
    expect((await kget('/stats/summary', false)).code).toBe(401);
    // Bearer tokens, as metrics-server sends: TokenReview, then a SubjectAccessReview on nodes/stats.
    await kube.kubectl(['create', 'serviceaccount', 'metrics-reader']);
    await kube.kubectl(['create', 'clusterrole', 'node-stats-reader', '--verb=get', '--resource=nodes/stats,nodes/metrics']);
    await kube.kubectl(['create', 'clusterrolebinding', 'node-stats-reader', '--clusterrole=node-stats-reader', '--serviceaccount=default:metrics-reader']);
    const bearer = (await kube.kubectl(['create', 'token', 'metrics-reader'])).stdout.trim();
    const kbearer = (path: string, token: string) =>
      new Promise<number>((resolve, reject) => {
        const req = httpsRequest(
          { host: '127.0.0.1', port: cl.kubeletPort, path, ca: kube.ca, servername: NODE, headers: { authorization: `Bearer ${token}` }, timeout: 10_000 },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('error', reject);
        req.end();
      });
    expect(await kbearer('/stats/summary', bearer)).toBe(200);
    expect(await kbearer('/metrics/resource', bearer)).toBe(200);
    expect(await kbearer('/pods', bearer)).toBe(403); // nodes/proxy is not granted
    expect(await kbearer('/stats/summary', 'not-a-token')).toBe(401);
    const sum = await kget('/stats/summary');
    expect(sum.code).toBe(200);
    const summary = JSON.parse(sum.body) as {
      node: { nodeName: string };
      pods: {
        podRef: { name: string };
        containers: { name: string; cpu: { usageCoreNanoSeconds: number }; memory: { workingSetBytes: number } }[];
        memory: { workingSetBytes: number };
      }[];
    };
    expect(summary.node.nodeName).toBe(NODE);
    const webStats = summary.pods.find((p) => p.podRef.name === 'web');
    expect(webStats?.containers.map((c) => c.name)).toEqual(['main']);
    expect(webStats!.containers[0]!.memory.workingSetBytes).toBeGreaterThan(0);
    expect(webStats!.containers[0]!.cpu.usageCoreNanoSeconds).toBeGreaterThan(0);
    const metrics = (await kget('/metrics/resource')).body;
    expect(metrics).toMatch(/^container_memory_working_set_bytes\{container="main",namespace="default",pod="web"\} [1-9]\d* \d+$/m);
    expect(metrics).toMatch(/^container_cpu_usage_seconds_total\{container="main",namespace="default",pod="web"\} [0-9.e-]+ \d+$/m);
    // The kubelet's pod list, through the same API.
    expect((JSON.parse((await kget('/pods')).body) as { items: { metadata: { name: string } }[] }).items.map((p) => p.metadata.name)).toContain('web');

    // kubectl top: kubectl -> API server -> aggregated metrics.k8s.io -> metrics-server, which
    // scraped /metrics/resource of this node (CPU needs two scrapes, 10 s apart).
    let topOut = '';
    const top = await waitFor(
      'kubectl top pod web',
      async () => {
        const r = await kube.kubectl(['top', 'pod', 'web', '--no-headers']);
        topOut = r.stdout + r.stderr;
        return r.code === 0 ? r.stdout : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 1000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last: ${topOut}\nmetrics-server: ${metricsServer?.logs().slice(-1500)}`);
    });
    expect(top).toMatch(/^web\s+\d+m\s+\d+Mi\s*$/); // busybox httpd's working set rounds to 0Mi
    // The same through the metrics API itself: non-zero, per container.
    const pm = JSON.parse((await kube.kubectl(['get', '--raw', '/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web'])).stdout) as {
      containers: { name: string; usage: { cpu: string; memory: string } }[];
    };
    expect(pm.containers.map((c) => c.name)).toEqual(['main']);
    expect(pm.containers[0]!.usage.memory).toMatch(/^[1-9]\d*(Ki|Mi)?$/);
    const topNode = await kube.kubectl(['top', 'node', NODE, '--no-headers']);
    expect(topNode.stdout, topNode.stderr).toMatch(new RegExp(`^${NODE}\\s+\\d+m\\s+`));

    // The virtual node's metrics are on the controller's /metrics.
    const metricsListen = (parse(readFileSync(cl.configPath, 'utf8')) as { metrics: { listen: string } }).metrics.listen;
    const prom = await (await fetch(`http://${metricsListen}/metrics`)).text();
    expect(prom).toMatch(/^cello_k8s_leader 1$/m);
    expect(prom).toMatch(/^cello_k8s_status_patches_total [1-9]/m);
    // (counters start again with the restarted controller: what it served since)
    expect(prom).toMatch(/^cello_k8s_kubelet_requests_total\{endpoint="stats",code="200"\} [1-9]/m);
    expect(prom).toMatch(/^cello_k8s_kubelet_requests_total\{endpoint="stats",code="401"\} [1-9]/m);
    expect(prom).toMatch(/^cello_k8s_kubelet_requests_total\{endpoint="exec",code="101"\} [1-9]/m);

    // Events recorded on the pod by the virtual node.
    const events = await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=web', '-o', 'json']);
    const reasons = (JSON.parse(events.stdout) as { items: { reason: string; source?: { component?: string } }[] }).items.map((e) => e.reason);
    expect(reasons).toContain('Scheduled');
    expect(reasons).toContain('CellRequested');

    // Graceful delete: the object goes only after the pod has stopped, and the cell ends.
    const cellId = cells.find((c) => c.pod?.name === 'web')!.id;
    const del = await kube.kubectl(['delete', 'pod', 'web', '--wait=true', '--timeout=60s'], { timeoutMs: 70_000 });
    expect(del.code).toBe(0);
    expect(await getPod('web')).toBeUndefined();
    await waitFor(
      "the pod's cell to end",
      async () => {
        const c = (await cl.cells()).find((x) => x.id === cellId);
        return !c || c.state === CellState.CELL_STATE_TERMINATED || c.state === CellState.CELL_STATE_TERMINATING;
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    expect((await cl.pod('web').catch(() => undefined))?.metadata).toBeUndefined();
    await allocatablePods('the node after web', 0);
  }, 240_000);

  it('kubectl logs of a finished pod still answers once its cell is gone, from the logs the controller kept', async () => {
    const marker = `job-output-${Date.now()}`;
    const yaml = podYaml('job-logs', registry.image, { tolerate: true, command: `echo ${marker}; echo second-line` }).replace(
      '  containers:\n',
      '  restartPolicy: Never\n  containers:\n',
    );
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: yaml });
    expect(applied.code, applied.stderr).toBe(0);
    await waitPod('job-logs', 'Succeeded', (p) => p.status.phase === 'Succeeded', 90_000);
    const { cellId } = await cl.pod('job-logs');
    expect(cellId).toBeTruthy();
    await waitFor(
      "the finished pod's cell to be gone",
      async () => {
        const c = (await cl.cells()).find((x) => x.id === cellId);
        return !c || c.state === CellState.CELL_STATE_TERMINATED;
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
    // Through the API server and this node's kubelet API, as for any pod.
    const logs = await kube.kubectl(['logs', 'job-logs']);
    expect(logs.stderr).toBe('');
    expect(logs.stdout).toBe(`${marker}\nsecond-line\n`);
    expect((await kube.kubectl(['logs', 'job-logs', '--tail=1'])).stdout).toBe('second-line\n');
    expect((await kube.kubectl(['logs', 'job-logs', '--limit-bytes=3'])).stdout).toBe('job');
    expect((await kube.kubectl(['logs', 'job-logs', '--tail=1', '--limit-bytes=6'])).stdout).toBe('second');
    // Its way to running is in its Events too, mirrored from the controller by this node.
    const evs = JSON.parse((await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=job-logs', '-o', 'json'])).stdout) as {
      items: { reason: string; message: string; source?: { component?: string } }[];
    };
    const mirrored = evs.items.filter((e) => e.source?.component === 'cello-virtual-node');
    expect(mirrored.find((e) => e.reason === 'Scheduled')?.message).toContain(`assigned to cell ${cellId}`);
    expect(mirrored.map((e) => e.reason)).toContain('Dispatched');
    expect((await kube.kubectl(['delete', 'pod', 'job-logs', '--timeout=60s'], { timeoutMs: 90_000 })).code).toBe(0);
  }, 240_000);

  it('a pod without the toleration is never placed on the virtual node', async () => {
    const r = await kube.kubectl(['apply', '-f', '-'], { input: podYaml('intolerant', registry.image, { tolerate: false, command: 'sleep 1000' }) });
    expect(r.code).toBe(0);
    const p = await waitPod(
      'intolerant',
      'reported Unschedulable',
      (x) => x.status.conditions?.some((c) => c.type === 'PodScheduled' && c.status === 'False' && c.reason === 'Unschedulable') ?? false,
      30_000,
    );
    expect(p.spec.nodeName ?? '').toBe('');
    expect(p.status.conditions!.find((c) => c.type === 'PodScheduled')!.message).toContain('untolerated taint');
    expect((await cl.pod('intolerant').catch(() => undefined))?.metadata).toBeUndefined();
    await kube.kubectl(['delete', 'pod', 'intolerant', '--wait=false']);
  });

  it('a pod no cell can hold stays Pending and says why: CellProgress False with its stage and last error, and a Warning Event', async () => {
    // Pinned to the smallest local type (512 MiB) while asking for 1 GiB: the API server and the
    // node accept it (the node is sized from this host), the controller's selection cannot.
    const tooBig = `apiVersion: v1
kind: Pod
metadata: { name: too-big, annotations: { cello.io/instance-type: local.nano } }
spec:
  nodeName: ${NODE}
  automountServiceAccountToken: false
  tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]
  containers: [{ name: main, image: ${registry.image}, command: ["sleep", "1000"], resources: { requests: { memory: 1Gi } } }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: tooBig })).code).toBe(0);
    const progress = (p: KPod) => p.status.conditions?.find((c) => c.type === 'cello.dev/CellProgress') as { status: string; reason?: string; message?: string } | undefined;
    const stuck = await waitPod('too-big', 'Pending with its last error', (p) => /NoFittingInstanceType/.test(progress(p)?.message ?? ''), 60_000);
    expect(stuck.status.phase).toBe('Pending');
    expect(progress(stuck)).toMatchObject({ status: 'False', reason: 'Selecting' });
    expect(progress(stuck)!.message).toMatch(
      /^selecting since \S+;.* last error NoFittingInstanceType: no instance type fits \d+m CPU, \d+ MiB memory \(including agent overhead\): local.nano: needs \d+ MiB memory, has 512 MiB/,
    );
    // No cell was launched for it.
    expect((await cl.cells()).some((c) => c.pod?.name === 'too-big')).toBe(false);
    await waitFor(
      'a Warning Event naming why too-big waits',
      async () => {
        const ev = await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=too-big,type=Warning', '-o', 'jsonpath={.items[*].message}']);
        return ev.stdout.includes('NoFittingInstanceType') ? ev.stdout : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    await kube.kubectl(['delete', 'pod', 'too-big', '--wait=false']);
  }, 120_000);

  it('a pod the core cannot run fails with the field named; a missing secret holds it with CreateContainerConfigError', async () => {
    const pvc = `apiVersion: v1
kind: Pod
metadata: { name: needs-pvc }
spec:
  nodeName: ${NODE}
  automountServiceAccountToken: false
  containers: [{ name: main, image: ${registry.image}, command: ["true"], volumeMounts: [{ name: data, mountPath: /data }] }]
  volumes: [{ name: data, persistentVolumeClaim: { claimName: data } }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: pvc })).code).toBe(0);
    const failed = await waitPod('needs-pvc', 'Failed', (p) => p.status.phase === 'Failed', 30_000);
    expect((failed.status as { message?: string }).message).toMatch(/persistentVolumeClaim/);
    // hostPID would share the cell agent's PID namespace: refused, the field named, never ignored.
    const hostPid = `apiVersion: v1
kind: Pod
metadata: { name: host-pid }
spec:
  nodeName: ${NODE}
  hostPID: true
  automountServiceAccountToken: false
  containers: [{ name: main, image: ${registry.image}, command: ["true"] }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: hostPid })).code).toBe(0);
    const refused = await waitPod('host-pid', 'Failed', (p) => p.status.phase === 'Failed', 30_000);
    expect((refused.status as { message?: string }).message).toMatch(/spec\.hostPID: is not supported on a cell/);
    const noSecret = `apiVersion: v1
kind: Pod
metadata: { name: needs-secret }
spec:
  nodeName: ${NODE}
  automountServiceAccountToken: false
  containers: [{ name: main, image: ${registry.image}, command: ["true"], env: [{ name: X, valueFrom: { secretKeyRef: { name: absent, key: k } } }] }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: noSecret })).code).toBe(0);
    const held = await waitPod(
      'needs-secret',
      'held for its secret',
      (p) => (p.status.containerStatuses?.[0]?.state as { waiting?: { reason?: string } } | undefined)?.waiting?.reason === 'CreateContainerConfigError',
      30_000,
    );
    expect(JSON.stringify(held.status.containerStatuses)).toContain('secret \\"absent\\" not found');
    // Once the secret exists, the back-off retry starts the pod.
    await kube.kubectl(['create', 'secret', 'generic', 'absent', '--from-literal=k=v']);
    await waitPod('needs-secret', 'started once the secret exists', (p) => p.status.phase === 'Running' || p.status.phase === 'Succeeded', 90_000);
    await kube.kubectl(['delete', 'pod', 'needs-pvc', 'host-pid', 'needs-secret', '--wait=false']);
  }, 150_000);

  it('the projected service-account volume: a pod-bound token from the TokenRequest API, the CA and the namespace', async () => {
    const pod = `apiVersion: v1
kind: Pod
metadata: { name: with-token }
spec:
  nodeName: ${NODE}
  terminationGracePeriodSeconds: 1
  containers: [{ name: main, image: ${registry.image}, command: ["sh", "-c", "sleep 1000"] }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: pod })).code).toBe(0);
    // The ServiceAccount admission plugin added the kube-api-access-* projected volume.
    const spec = JSON.parse((await kube.kubectl(['get', 'pod', 'with-token', '-o', 'json'])).stdout) as { spec: { volumes: { name: string; projected?: unknown }[] } };
    expect(spec.spec.volumes.some((v) => v.name.startsWith('kube-api-access-') && v.projected)).toBe(true);
    await waitPod('with-token', 'Running', (p) => p.status.phase === 'Running', 90_000);
    const dir = '/var/run/secrets/kubernetes.io/serviceaccount';
    const token = (await kube.kubectl(['exec', 'with-token', '--', 'cat', `${dir}/token`])).stdout;
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string; exp: number; 'kubernetes.io': { pod: { name: string } } };
    expect(claims.sub).toBe('system:serviceaccount:default:default');
    expect(claims['kubernetes.io'].pod.name).toBe('with-token');
    expect(claims.exp * 1000).toBeGreaterThan(Date.now() + 30 * 60_000);
    expect((await kube.kubectl(['exec', 'with-token', '--', 'cat', `${dir}/namespace`])).stdout).toBe('default');
    expect((await kube.kubectl(['exec', 'with-token', '--', 'cat', `${dir}/ca.crt`])).stdout).toBe(kube.ca);
    // The API server accepts the token as the pod's service account.
    const review = await kube.kubectl(['create', '-o', 'json', '-f', '-'], {
      input: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token } }),
    });
    expect((JSON.parse(review.stdout) as { status: { authenticated: boolean } }).status.authenticated).toBe(true);
    await kube.kubectl(['delete', 'pod', 'with-token', '--wait=false']);
  }, 150_000);

  it('a running pod is kept current in place: its projected token is refreshed before expiry, an edited ConfigMap reaches its volume, kubectl attach, an image change and activeDeadlineSeconds apply', async () => {
    await kube.kubectl(['create', 'configmap', 'live-settings', '--from-literal=mode=one']);
    const pod = `apiVersion: v1
kind: Pod
metadata: { name: live }
spec:
  nodeName: ${NODE}
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: main
    image: ${registry.image}
    stdin: true
    command: ["sh", "-c", "while read line; do echo \\"attached:$line\\"; done; sleep 3600"]
    volumeMounts: [{ name: tok, mountPath: /var/run/tok }, { name: cfg, mountPath: /etc/cfg }]
  volumes:
  - name: tok
    projected: { sources: [{ serviceAccountToken: { path: token, expirationSeconds: 600, audience: cello-test } }] }
  - name: cfg
    configMap: { name: live-settings }
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: pod })).code).toBe(0);
    const running = await waitPod('live', 'Running', (p) => p.status.phase === 'Running' && !!p.status.containerStatuses?.[0]?.state.running, 90_000);
    const cat = async (path: string) => (await kube.kubectl(['exec', 'live', '--', 'cat', path])).stdout;
    const review = async (token: string) =>
      (
        JSON.parse(
          (
            await kube.kubectl(['create', '-o', 'json', '-f', '-'], {
              input: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: ['cello-test'] } }),
            })
          ).stdout,
        ) as { status: { authenticated?: boolean; audiences?: string[] } }
      ).status;
    const t1 = await cat('/var/run/tok/token');
    expect(t1).toMatch(/^ey/);
    // Refreshed in the running container (ratio 0.005 of 600 s: after about 3 s), as the kubelet
    // does it: a new version of the volume behind the ..data link, swapped atomically.
    const t2 = await waitFor(
      'the token file to be refreshed in the running container',
      async () => {
        const t = await cat('/var/run/tok/token');
        return t && t !== t1 ? t : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    const claims = (t: string) =>
      JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString()) as { iat: number; exp: number; aud: string[]; 'kubernetes.io': { pod: { name: string } } };
    expect(claims(t2).exp - claims(t2).iat).toBe(600);
    expect(claims(t2).iat).toBeGreaterThanOrEqual(claims(t1).iat);
    expect(claims(t2).aud).toEqual(['cello-test']);
    expect(claims(t2)['kubernetes.io'].pod.name).toBe('live');
    const metricsListen = (parse(readFileSync(cl.configPath, 'utf8')) as { metrics: { listen: string } }).metrics.listen;
    expect(await (await fetch(`http://${metricsListen}/metrics`)).text()).toMatch(/^cello_k8s_pod_updates_total\{why="token"\} [1-9]/m);
    expect(await review(t2)).toMatchObject({ authenticated: true, audiences: ['cello-test'] });
    expect((await kube.kubectl(['exec', 'live', '--', 'readlink', '/var/run/tok/token'])).stdout.trim()).toBe('..data/token');

    // An edited ConfigMap reaches the mounted volume (re-read every dataSyncSeconds).
    expect(await cat('/etc/cfg/mode')).toBe('one');
    const edited = await kube.kubectl(['create', 'configmap', 'live-settings', '--from-literal=mode=two', '--dry-run=client', '-o', 'yaml']);
    expect((await kube.kubectl(['apply', '-f', '-'], { input: edited.stdout })).code).toBe(0);
    await waitFor('the edited ConfigMap in the running container', async () => (await cat('/etc/cfg/mode')) === 'two', { timeoutMs: 20_000, intervalMs: 500 });
    // None of that restarted the container.
    const same = (await getPod('live'))!;
    expect(same.status.containerStatuses![0]!.restartCount).toBe(0);
    expect(same.status.containerStatuses![0]!.state.running?.startedAt).toBe(running.status.containerStatuses![0]!.state.running?.startedAt);

    // kubectl attach: the container's own stdin and stdout, through the API server's SPDY to /attach.
    const attach = kube.spawnKubectl(['attach', '-i', 'live', '-c', 'main']);
    let attached = '';
    attach.stdout!.on('data', (b: Buffer) => (attached += b.toString()));
    attach.stderr!.on('data', (b: Buffer) => (attached += b.toString()));
    try {
      const line = async (text: string) => {
        attach.stdin!.write(`${text}\n`);
        await waitFor(`"${text}" echoed through kubectl attach`, () => attached.includes(`attached:${text}`), { timeoutMs: 5_000, intervalMs: 100 });
      };
      // The first line may be written before the stream is up: resend until one comes back.
      await waitFor(
        'kubectl attach to connect',
        async () =>
          line('first').then(
            () => true,
            () => false,
          ),
        { timeoutMs: 20_000, intervalMs: 0 },
      );
      await line('second line');
    } catch (err) {
      throw new Error(`${(err as Error).message}\nkubectl attach: ${attached}`);
    } finally {
      attach.kill('SIGTERM');
    }
    expect((await kube.kubectl(['logs', 'live'])).stdout).toContain('attached:second line');

    // In-place updates the API server allows: a new image restarts just that container with it.
    const image2 = await pushBusybox(registry.server, 'busybox:v2');
    expect(image2).not.toBe(registry.image);
    const set = await kube.kubectl(['set', 'image', 'pod/live', `main=${image2}`]);
    expect(set.code, set.stderr).toBe(0);
    const updated = await waitPod(
      'live',
      'running the new image',
      (p) => p.status.containerStatuses?.[0]?.image === image2 && !!p.status.containerStatuses[0].state.running,
      60_000,
    );
    expect(updated.metadata.uid).toBe(running.metadata.uid);
    expect(updated.status.podIP).toBe(running.status.podIP); // same cell
    // activeDeadlineSeconds set on a running pod: it has been active longer, so it ends at once.
    const patched = await kube.kubectl(['patch', 'pod', 'live', '-p', JSON.stringify({ spec: { activeDeadlineSeconds: 1 } })]);
    expect(patched.code, patched.stderr).toBe(0);
    const failed = await waitPod('live', 'Failed with DeadlineExceeded', (p) => p.status.phase === 'Failed', 30_000);
    expect((failed.status as { reason?: string }).reason).toBe('DeadlineExceeded');
    await kube.kubectl(['delete', 'pod', 'live', '--wait=false']);
  }, 180_000);

  it('token refresh scheduling on an injected clock: a token is reused (same manifest) until its refresh time, then requested anew', async () => {
    // A pod no node runs: TokenRequests are bound to it all the same.
    const pod = `apiVersion: v1
kind: Pod
metadata: { name: clock }
spec:
  nodeName: nowhere
  automountServiceAccountToken: false
  containers: [{ name: main, image: ${registry.image} }]
  volumes: [{ name: tok, projected: { sources: [{ serviceAccountToken: { path: token, expirationSeconds: 3600, audience: clock-test } }] } }]
`;
    expect((await kube.kubectl(['apply', '-f', '-'], { input: pod })).code).toBe(0);
    try {
      const kpod = JSON.parse((await kube.kubectl(['get', 'pod', 'clock', '-o', 'json'])).stdout) as Parameters<typeof buildPodManifest>[1];
      const rest = new KubeRest(loadKubeConfig(kube.kubeconfig));
      let now = Date.now();
      const o = { nodeName: NODE };
      const first = await buildPodManifest(rest, kpod, o, { now: () => now, refreshRatio: 0.8 });
      const [issued] = [...first.tokens.values()];
      // The kubelet's rule on the token the API server issued: 80 % of its 3600 s.
      expect(issued!.expiresAt - issued!.issuedAt).toBeGreaterThan(3590_000);
      expect(first.nextTokenRefreshAt).toBe(issued!.issuedAt + 0.8 * (issued!.expiresAt - issued!.issuedAt));
      now = first.nextTokenRefreshAt - 1000;
      const before = await buildPodManifest(rest, kpod, o, { cache: first.tokens, now: () => now, refreshRatio: 0.8 });
      expect(before.manifest).toBe(first.manifest); // nothing to send: the core is not bothered
      now = first.nextTokenRefreshAt;
      const due = await buildPodManifest(rest, kpod, o, { cache: before.tokens, now: () => now, refreshRatio: 0.8 });
      const token = (m: string) => /token: (ey[\w.-]+)/.exec(m)![1]!;
      expect(token(due.manifest)).not.toBe(token(first.manifest));
      expect(due.nextTokenRefreshAt).toBeGreaterThan(first.nextTokenRefreshAt);
    } finally {
      await kube.kubectl(['delete', 'pod', 'clock', '--wait=false', '--grace-period=0', '--force']);
    }
  });

  it('imagePullSecrets from the pod and from its ServiceAccount reach the cell as credentials for the private registry only', async () => {
    const secret = (name: string) =>
      kube.kubectl(['create', 'secret', 'docker-registry', name, `--docker-server=${privateRegistry.host}`, '--docker-username=puller', `--docker-password=${PULL_PASSWORD}`]);
    expect((await secret('pod-regcred')).code).toBe(0);
    expect((await secret('sa-regcred')).code).toBe(0);
    await kube.kubectl(['apply', '-f', '-'], { input: 'apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: puller }\nimagePullSecrets: [{ name: sa-regcred }]\n' });
    // The virtual node reads the account itself for a pod that names no pull secrets (the
    // ServiceAccount admission plugin copies them too, when it is on): built here from a pod
    // the API server has not seen.
    const built = await buildPodManifest(
      new KubeRest(loadKubeConfig(kube.kubeconfig)),
      {
        metadata: { name: 'probe', namespace: 'default', uid: 'u-1' },
        spec: { serviceAccountName: 'puller', containers: [{ name: 'main', image: privateImage }] },
      },
      { nodeName: NODE },
    );
    const docs = built.manifest
      .split(/^---$/m)
      .map((d) => parse(d) as { kind: string; metadata: { name: string }; type?: string; spec?: { imagePullSecrets?: { name: string }[] } });
    expect(docs.find((d) => d.kind === 'Pod')!.spec!.imagePullSecrets).toEqual([{ name: 'sa-regcred' }]);
    expect(docs.find((d) => d.kind === 'Secret')).toMatchObject({ metadata: { name: 'sa-regcred' }, type: 'kubernetes.io/dockerconfigjson' });

    const pod = (name: string, extra: string) =>
      podYaml(name, privateImage, { tolerate: true, command: 'sleep 1000', grace: 1 })
        .replace('  containers:', `${extra}\n  containers:`)
        .replace(/ {4}env: .*\n/, '');
    await kube.kubectl(['apply', '-f', '-'], { input: pod('pull-own', '  imagePullSecrets: [{ name: pod-regcred }]') });
    await kube.kubectl(['apply', '-f', '-'], { input: pod('pull-sa', '  serviceAccountName: puller') });
    const want = [{ registry: privateRegistry.host, username: 'puller', password: PULL_PASSWORD, identityToken: '' }];
    for (const name of ['pull-own', 'pull-sa']) {
      await waitPod(name, 'Running from the private registry', (p) => p.status.phase === 'Running', 90_000);
      const core = await cl.pod(name);
      const sent = cl.appliedOnCell(core.cellId);
      expect(sent.registryCredentials).toEqual(want);
      expect(Object.keys(sent.secrets).filter((k) => k.includes('regcred'))).toEqual([]);
    }
    // A wrong password: the registry's reason in the container status and the Events.
    await kube.kubectl(['create', 'secret', 'docker-registry', 'bad-regcred', `--docker-server=${privateRegistry.host}`, '--docker-username=puller', '--docker-password=guess']);
    await kube.kubectl(['apply', '-f', '-'], { input: pod('pull-bad', '  imagePullSecrets: [{ name: bad-regcred }]') });
    const bad = await waitPod(
      'pull-bad',
      'in ImagePullBackOff',
      (p) => (p.status.containerStatuses?.[0]?.state as { waiting?: { reason?: string } } | undefined)?.waiting?.reason === 'ImagePullBackOff',
      60_000,
    );
    expect(JSON.stringify(bad.status.containerStatuses)).toMatch(/unauthorized/);
    await waitFor(
      'the Failed event with the reason',
      async () => (await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=pull-bad', '-o', 'json'])).stdout.match(/unauthorized/),
      { timeoutMs: 20_000, intervalMs: 500 },
    );
    expect(cl.controllerLog).not.toContain(PULL_PASSWORD);
    await kube.kubectl(['delete', 'pod', 'pull-own', 'pull-sa', 'pull-bad', '--wait=false']);
  }, 180_000);

  it('Ready is False, with the reason, while the controller core does not answer', async () => {
    const serving = await kube.issueCert('kubelet-serving-3', { cn: 'cello-orphan', ips: ['127.0.0.1'] });
    const node = await startVirtualNode({
      nodeName: 'cello-orphan',
      kubeconfig: kube.kubeconfig,
      controllerAddress: `127.0.0.1:${await freePort()}`, // nothing listens there
      controllerCredentials: credentials.createInsecure(),
      providerName: 'local',
      internalIP: '127.0.0.1',
      kubelet: { listenHost: '127.0.0.1', port: 0, cert: serving.cert, key: serving.key, clientCA: kube.ca },
      capacity: async () => ({ capacity: { cpu: '1', memory: '1Gi', pods: '1' }, allocatable: { cpu: '1', memory: '1Gi', pods: '1' } }),
      log: createLogger({ level: 'silent' }),
    });
    try {
      const n = JSON.parse((await kube.kubectl(['get', 'node', 'cello-orphan', '-o', 'json'])).stdout) as {
        status: { conditions: { type: string; status: string; reason: string; message: string }[] };
      };
      const ready = n.status.conditions.find((c) => c.type === 'Ready')!;
      expect(ready).toMatchObject({ status: 'False', reason: 'ControllerNotReady' });
      expect(ready.message).toMatch(/controller API does not answer/);
    } finally {
      await node.stop();
      await kube.kubectl(['delete', 'node', 'cello-orphan', '--wait=false']);
    }
  });

  it('two replicas of the virtual node: one leads, the other takes over when it stops', async () => {
    const serving = await kube.issueCert('kubelet-serving-2', { cn: 'cello-vn2', ips: ['127.0.0.1'] });
    const start = async (identity: string) =>
      startVirtualNode({
        nodeName: 'cello-vn2',
        kubeconfig: kube.kubeconfig,
        controllerAddress: cl.server,
        controllerCredentials: cl.apiCredentials(),
        providerName: 'local',
        internalIP: '127.0.0.1',
        kubelet: { listenHost: '127.0.0.1', port: 0, cert: serving.cert, key: serving.key, clientCA: kube.ca },
        capacity: async () => ({ capacity: { cpu: '1', memory: '1Gi', pods: '1' }, allocatable: { cpu: '1', memory: '1Gi', pods: '1' } }),
        leaderElection: { namespace: 'cello-system', name: 'cello-vn2', identity, leaseSeconds: 4, renewSeconds: 1, retrySeconds: 1 },
        log: createLogger({ level: 'silent' }),
      });
    const a = await start('replica-a');
    const b = await start('replica-b');
    try {
      const leader = await waitFor('one leader', () => (a.isLeader() !== b.isLeader() ? (a.isLeader() ? a : b) : undefined), { timeoutMs: 15_000, intervalMs: 100 });
      const follower = leader === a ? b : a;
      await waitFor('the leader to run the node', () => leader.podSync() !== undefined, { timeoutMs: 15_000, intervalMs: 100 });
      expect(follower.podSync()).toBeUndefined();
      expect(follower.isLeader()).toBe(false);
      await leader.stop();
      await waitFor('the other replica to take over', () => follower.isLeader() && follower.podSync() !== undefined, { timeoutMs: 15_000, intervalMs: 100 });
      const lease = JSON.parse((await kube.kubectl(['-n', 'cello-system', 'get', 'lease', 'cello-vn2', '-o', 'json'])).stdout) as {
        spec: { holderIdentity: string; leaseTransitions: number };
      };
      expect(lease.spec.holderIdentity).toBe(follower === a ? 'replica-a' : 'replica-b');
      expect(lease.spec.leaseTransitions).toBeGreaterThanOrEqual(1);
    } finally {
      await a.stop();
      await b.stop();
      await kube.kubectl(['delete', 'node', 'cello-vn2', '--wait=false']);
    }
  });

  it('deploy/base builds with kustomize, applies to the API server, and grants the virtual node what it uses and no more', async () => {
    const built = await kube.kubectl(['kustomize', DEPLOY]);
    expect(built.stderr).toBe('');
    const docs = built.stdout.split(/^---$/m).map((d) => parse(d) as { kind: string; metadata: { name: string; namespace?: string }; data?: Record<string, string> });
    expect(docs.map((d) => d.kind).sort()).toEqual([
      'ClusterRole',
      'ClusterRoleBinding',
      'ConfigMap',
      'Deployment',
      'Namespace',
      'NetworkPolicy',
      'PersistentVolumeClaim',
      'Role',
      'Role',
      'RoleBinding',
      'RoleBinding',
      'ServiceAccount',
    ]);
    expect(docs.find((d) => d.kind === 'Role' && d.metadata.name === 'cello-node-lease')!.metadata.namespace).toBe('kube-node-lease');
    // The configuration in the ConfigMap is valid for this controller.
    const cfg = parseConfig(parse(docs.find((d) => d.kind === 'ConfigMap')!.data!['controller.yaml']!), 'deploy/base/configmap.yaml');
    expect(cfg.kubernetes?.enabled).toBe(true);
    const { kind: _kind, ...aws } = cfg.provider as Record<string, unknown>;
    expect(() => parseAwsProviderConfig(aws, 'provider')).not.toThrow();
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: built.stdout });
    expect(applied.code, applied.stderr).toBe(0);
    expect(applied.stdout).toContain('deployment.apps/cello-controller created');
    const sa = 'system:serviceaccount:cello-system:cello-controller';
    const can = async (...args: string[]) => (await kube.kubectl(['auth', 'can-i', '--as', sa, ...args])).stdout.trim();
    for (const a of [
      ['create', 'nodes'],
      ['patch', 'nodes', '--subresource=status'],
      ['watch', 'pods'],
      ['delete', 'pods'],
      ['patch', 'pods', '--subresource=status'],
      ['get', 'secrets', '-n', 'default'],
      ['get', 'configmaps', '-n', 'default'],
      ['create', 'serviceaccounts', '--subresource=token', '-n', 'default'],
      ['get', 'serviceaccounts', '-n', 'default'],
      ['create', 'events', '-n', 'default'],
      ['watch', 'services'],
      ['list', 'endpointslices.discovery.k8s.io'],
      ['create', 'tokenreviews'],
      ['create', 'subjectaccessreviews'],
      ['patch', 'leases', '-n', 'kube-node-lease'],
      ['update', 'leases', '-n', 'cello-system'],
    ])
      expect(`${a.join(' ')}: ${await can(...a)}`).toBe(`${a.join(' ')}: yes`);
    for (const a of [
      ['delete', 'nodes'],
      ['create', 'pods'],
      ['update', 'pods'],
      ['list', 'secrets'],
      ['create', 'secrets'],
      ['update', 'leases', '-n', 'kube-system'],
      ['create', 'clusterrolebindings'],
      ['create', 'pods', '--subresource=exec'],
    ])
      expect(`${a.join(' ')}: ${await can(...a)}`).toBe(`${a.join(' ')}: no`);

    // Those permissions suffice: a virtual node running as the ServiceAccount runs a pod to the end.
    const token = (await kube.kubectl(['-n', 'cello-system', 'create', 'token', 'cello-controller'])).stdout.trim();
    expect(token).toMatch(/^ey/);
    const kc = await kubeconfigFor(kube, 'sa', { token });
    const serving = await kube.issueCert('kubelet-serving-rbac', { cn: 'cello-rbac', ips: ['127.0.0.1'] });
    const node = await startVirtualNode({
      nodeName: 'cello-rbac',
      kubeconfig: kc,
      controllerAddress: cl.server,
      controllerCredentials: cl.apiCredentials(),
      providerName: 'local',
      internalIP: '127.0.0.1',
      kubelet: { listenHost: '127.0.0.1', port: 0, cert: serving.cert, key: serving.key, clientCA: kube.ca },
      capacity: async () => ({ capacity: { cpu: '4', memory: '4Gi', pods: '4' }, allocatable: { cpu: '4', memory: '4Gi', pods: '4' } }),
      leaderElection: { namespace: 'cello-system', name: 'cello-rbac', identity: 'rbac-test', leaseSeconds: 10 },
      log: createLogger({ level: 'silent' }),
    });
    try {
      await waitFor("the ServiceAccount's node to lead", () => node.podSync() !== undefined, { timeoutMs: 15_000, intervalMs: 100 });
      const pod = podYaml('rbac-pod', registry.image, { tolerate: true, command: 'echo "greeting=$FROM_CM"; sleep 1000', grace: 1 }).replace(
        'nodeSelector: { type: virtual-kubelet }',
        'nodeName: cello-rbac',
      );
      expect((await kube.kubectl(['apply', '-f', '-'], { input: pod })).code).toBe(0);
      await waitPod('rbac-pod', 'Running under the least-privilege role', (p) => p.status.phase === 'Running', 90_000);
      const del = await kube.kubectl(['delete', 'pod', 'rbac-pod', '--wait=true', '--timeout=60s'], { timeoutMs: 70_000 });
      expect(del.code, del.stderr).toBe(0);
    } finally {
      await node.stop();
      await kube.kubectl(['delete', 'node', 'cello-rbac', '--wait=false']);
    }
  }, 180_000);
});
