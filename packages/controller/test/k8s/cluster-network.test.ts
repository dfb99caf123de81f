// The cluster network of pods on cells, through the real chain: a real kube-apiserver,
// kube-scheduler and kube-controller-manager (Deployments, ReplicaSets, Jobs and the
// EndpointSlices of Services are made by it, not by the test), the controller daemon with the
// virtual node and the local provider (real cell-agent processes, runc, one network namespace
// per cell), CoreDNS deployed as a pod on a cell behind kube-dns (as a cluster runs it), and
// kubectl. Each pod runs on its own cell; a client pod reaches Services through its cell's
// nftables Service proxy and cluster DNS. The API server advertises this host's own address (as
// a cluster's control plane advertises one its nodes reach), so the `kubernetes` Service leads
// there from every cell: CoreDNS and the pods that call the API use it, as in a cluster.
import { generateKeyPairSync, sign } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deployClusterDns, hostAddress, pushApiClient, pushCoreDns, startKubeApiserver, waitFor, type ClusterDns, type KubeApiserver } from '@cello/testkit';
import { startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { KubeCluster } from '../helpers/kube-cluster.js';

const NODE = 'cello-net';
const DNS_IP = '10.0.0.10';
const DOMAIN = 'cluster.local';

let registry: Registry;
let kube: KubeApiserver;
let dns: ClusterDns;
let cl: KubeCluster;
/** An HTTP server on this host's own non-loopback address: "the outside" for a pod. */
let outside: Server;
/** The apiclient image (testkit pushApiClient): an in-cluster API caller with no kubectl. */
let apiClient: string;

interface KPod {
  metadata: { name: string; deletionTimestamp?: string };
  status: { phase?: string; podIP?: string; conditions?: { type: string; status: string }[] };
}

const onCells = `      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      nodeSelector: { type: virtual-kubelet }
      tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]`;

const manifests = (image: string) => `apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
${onCells}
      containers:
      - name: web
        image: ${image}
        # Each replica answers with its own name; /ready is what its readiness probe fetches.
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && echo ok > /www/ready && exec httpd -f -p 8080 -h /www"]
        ports: [{ name: http, containerPort: 8080 }]
        readinessProbe: { httpGet: { path: /ready, port: http }, periodSeconds: 1, failureThreshold: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: v1
kind: Service
metadata: { name: web-headless }
spec:
  clusterIP: None
  selector: { app: web }
  ports: [{ name: http, port: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: ext }
spec: { type: ExternalName, externalName: db.example.org }
---
apiVersion: v1
kind: Pod
metadata: { name: client }
spec:
${onCells.replace(/^ {4}/gm, '')}
  containers:
  - name: client
    image: ${image}
    command: ["sleep", "3600"]
`;

async function kubectlOk(args: string[], o: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await kube.kubectl(args, o);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} (exit ${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** The web Deployment's pods that are running and not being deleted, by name. */
async function webPods(): Promise<KPod[]> {
  const list = JSON.parse(await kubectlOk(['get', 'pods', '-l', 'app=web', '-o', 'json'])) as { items: KPod[] };
  return list.items.filter((p) => !p.metadata.deletionTimestamp && p.status.phase === 'Running');
}

const isReady = (p: KPod) => p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;

/** Ready endpoint addresses of a Service, from the EndpointSlices kube-controller-manager writes. */
async function readyEndpoints(service: string): Promise<string[]> {
  const slices = JSON.parse(await kubectlOk(['get', 'endpointslices', '-l', `kubernetes.io/service-name=${service}`, '-o', 'json'])) as {
    items: { endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[] }[];
  };
  return slices.items
    .flatMap((s) => s.endpoints ?? [])
    .filter((e) => e.conditions?.ready)
    .flatMap((e) => e.addresses)
    .sort();
}

/** `n` HTTP requests from the client pod to `target`:`port`; each answer is the replica's name ('' if none). */
async function fetchFromClient(target: string, n: number, port = 80): Promise<string[]> {
  // (busybox-static's wget crashes in static glibc; nc speaks the request instead.)
  const script = `for i in $(seq ${n}); do r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${target} ${port} | tail -n 1); echo "A:$r"; done`;
  const out = await kubectlOk(['exec', 'client', '--', 'sh', '-c', script], { timeoutMs: 60_000 });
  return out
    .split('\n')
    .filter((l) => l.startsWith('A:'))
    .map((l) => l.slice(2).trim());
}

/** Waits until requests to `target`:`port` are answered by exactly the pods named in `expected`. */
async function waitAnswers(target: string, expected: () => Promise<string[]>, what: string, timeoutMs = 60_000, port = 80): Promise<string[]> {
  let last: string[] = [];
  let want: string[] = [];
  await waitFor(
    what,
    async () => {
      want = (await expected()).sort();
      last = await fetchFromClient(target, 4 * want.length + 8, port);
      const seen = [...new Set(last)].sort();
      return JSON.stringify(seen) === JSON.stringify(want);
    },
    { timeoutMs, intervalMs: 500 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; wanted ${JSON.stringify(want)}, last answers ${JSON.stringify(last)}`);
  });
  return want;
}

/** One HTTP/1.0 GET from this host to host:port: the answer's last line ('' when none came). */
function httpGetLastLine(host: string, port: number): Promise<string> {
  return new Promise((done) => {
    let data = '';
    const s = connect(port, host, () => s.end('GET / HTTP/1.0\r\n\r\n'));
    s.setTimeout(3000, () => s.destroy());
    s.on('data', (d: Buffer) => (data += d.toString()));
    s.on('error', () => {});
    s.on('close', () => done(data.trim().split('\n').pop()!.trim()));
  });
}

const readyWebPodNames = async () => (await webPods()).filter(isReady).map((p) => p.metadata.name);

/** Waits until the Deployment's ready replicas are `n` and the Service's slice lists them all. */
async function waitRollout(n: number): Promise<KPod[]> {
  let seen = '';
  return await waitFor(
    `${n} ready web replicas in the Service's EndpointSlice`,
    async () => {
      const pods = (await webPods()).filter(isReady);
      const ips = pods.map((p) => p.status.podIP!).sort();
      const eps = await readyEndpoints('web');
      seen = `ready pods ${JSON.stringify(ips)}, ready endpoints ${JSON.stringify(eps)}`;
      return pods.length === n && JSON.stringify(ips) === JSON.stringify(eps) ? pods : undefined;
    },
    { timeoutMs: 120_000, intervalMs: 500 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}; ${seen}\n${cl.controllerLog.split('\n').slice(-10).join('\n')}`);
  });
}

/** busybox nslookup from the client pod: the addresses answered for `name` (after the server's own). */
async function lookup(name: string, type = 'A'): Promise<string> {
  const r = await kube.kubectl(['exec', 'client', '--', 'nslookup', `-type=${type}`, name], { timeoutMs: 30_000 });
  return `${r.stdout}${r.stderr}`;
}

beforeAll(async () => {
  registry = await startFixtureRegistry();
  // Pods on cells reach the API server at this host's own address, which their default route
  // (the cello0 bridge) leads to: it is the kubernetes Service's endpoint.
  kube = await startKubeApiserver({ advertiseAddress: hostAddress() });
  await kubectlOk(['create', 'namespace', 'cello-system']);
  const serving = await kube.issueCert('kubelet-serving', { cn: NODE, ips: ['127.0.0.1'], dns: [NODE] });
  cl = new KubeCluster({ registry, warm: 0, healthSeconds: 5, gcIntervalSeconds: 2, retainFinishedSeconds: 0 }, kube, serving, {
    nodeName: NODE,
    maxCells: 10,
  });
  await cl.start();
  await cl.waitNodeRegistered();
  // CoreDNS as a pod on a cell, before the pods whose resolv.conf names its Service.
  dns = await deployClusterDns(kube, {
    image: await pushCoreDns(registry.server),
    clusterIP: DNS_IP,
    domain: DOMAIN,
    nodeSelector: { type: 'virtual-kubelet' },
    tolerations: [{ key: 'virtual-kubelet.io/provider', operator: 'Exists', effect: 'NoSchedule' }],
  }).catch((err: Error) => {
    throw new Error(`${err.message}\n${cl.controllerLog.split('\n').slice(-15).join('\n')}`);
  });
  apiClient = await pushApiClient(registry.server);
  await kubectlOk(['apply', '-f', '-'], { input: manifests(registry.image) });
  await waitFor(
    'the client pod to run',
    async () => {
      const r = await kube.kubectl(['get', 'pod', 'client', '-o', 'jsonpath={.status.phase}']);
      return r.stdout === 'Running';
    },
    { timeoutMs: 120_000, intervalMs: 500 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${cl.controllerLog.split('\n').slice(-15).join('\n')}`);
  });
}, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries and CoreDNS

afterAll(async () => {
  // The workloads go away through the API, as a user removes them (garbage collection ends their
  // ReplicaSets and pods, the virtual node their cells), before the controller stops.
  if (kube && cl) {
    await dns?.remove();
    await kube.kubectl(['delete', 'deployment,job,pod', '--all', '--wait=false']);
    let left = '';
    await waitFor(
      'every pod and its cell to be gone',
      async () => {
        left = `pods: ${(await kube.kubectl(['get', 'pods', '-A', '-o', 'name'])).stdout.trim()}; cells: ${cl
          .cellDirs()
          .filter((d) => !d.startsWith('.'))
          .join(' ')}`;
        return left === 'pods: ; cells: ';
      },
      { timeoutMs: 90_000, intervalMs: 500 },
    ).catch((err: Error) => console.error(`${err.message}; left: ${left} (the controller's stop ends the cells instead)`));
  }
  await cl?.stop();
  await new Promise((done) => (outside ? outside.close(done) : done(undefined)));
  await kube?.stop();
  await registry?.server.stop();
}, 120_000);

describe('cluster network: Deployments, Services, cluster DNS and Jobs on cells', () => {
  it("a client pod reaches a Deployment's Service by name, by FQDN and by ClusterIP; both replicas answer", async () => {
    const resolv = await kubectlOk(['exec', 'client', '--', 'cat', '/etc/resolv.conf']);
    expect(resolv).toContain(`nameserver ${DNS_IP}\nsearch default.svc.${DOMAIN} svc.${DOMAIN} ${DOMAIN}`);
    const pods = await waitRollout(2);
    const names = pods.map((p) => p.metadata.name).sort();
    const clusterIP = (await kubectlOk(['get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
    expect(clusterIP).toMatch(/^10\.0\.0\.\d+$/);
    for (const target of ['web', `web.default.svc.${DOMAIN}`, clusterIP]) {
      expect(await waitAnswers(target, readyWebPodNames, `both replicas to answer on ${target}`)).toEqual(names);
    }
  }, 300_000);

  it('scaling the Deployment to 3 and deleting a pod change the endpoints and who answers', async () => {
    await kubectlOk(['scale', 'deployment', 'web', '--replicas=3']);
    const three = (await waitRollout(3)).map((p) => p.metadata.name);
    expect(await waitAnswers('web', readyWebPodNames, 'three replicas to answer')).toEqual([...three].sort());

    const victim = three[0]!;
    await kubectlOk(['delete', 'pod', victim, '--wait=false']);
    const after = (await waitRollout(3)).map((p) => p.metadata.name);
    expect(after).not.toContain(victim);
    const answering = await waitAnswers('web', readyWebPodNames, 'the replacement to answer instead of the deleted pod');
    expect(answering).not.toContain(victim);
  }, 300_000);

  it('a pod that is not Ready receives no traffic, and does again once Ready', async () => {
    const pods = await waitRollout(3);
    const sick = pods[0]!;
    await kubectlOk(['exec', sick.metadata.name, '--', 'rm', '/www/ready']);
    await waitFor(`${sick.metadata.name}'s endpoint to turn not ready`, async () => !(await readyEndpoints('web')).includes(sick.status.podIP!), {
      timeoutMs: 60_000,
      intervalMs: 500,
    });
    const answering = await waitAnswers('web', readyWebPodNames, 'only the Ready replicas to answer');
    expect(answering).toHaveLength(2);
    expect(answering).not.toContain(sick.metadata.name);
    // Repeated requests never reach it while it is not Ready.
    expect(await fetchFromClient('web', 20)).not.toContain(sick.metadata.name);

    await kubectlOk(['exec', sick.metadata.name, '--', 'sh', '-c', 'echo ok > /www/ready']);
    await waitFor(`${sick.metadata.name}'s endpoint to turn ready again`, async () => (await readyEndpoints('web')).includes(sick.status.podIP!), {
      timeoutMs: 60_000,
      intervalMs: 500,
    });
    expect(await waitAnswers('web', readyWebPodNames, 'the recovered replica to answer again')).toContain(sick.metadata.name);
  }, 300_000);

  it('a headless Service resolves to the pod IPs; an ExternalName Service resolves by CNAME', async () => {
    const pods = await waitRollout(3);
    const ips = pods.map((p) => p.status.podIP!).sort();
    let out = '';
    await waitFor(
      'the headless Service to resolve to every ready pod IP',
      async () => {
        out = await lookup(`web-headless.default.svc.${DOMAIN}`);
        // The answers follow the "Name:" line; the server's own address comes before it.
        const answers = [...out.slice(out.indexOf('Name:')).matchAll(/Address: *(\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1]!).sort();
        return out.includes('Name:') && JSON.stringify(answers) === JSON.stringify(ips);
      },
      { timeoutMs: 30_000, intervalMs: 1000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; pod IPs ${JSON.stringify(ips)}; nslookup said:\n${out}`);
    });
    expect(out).toContain(`Server:\t\t${DNS_IP}`);

    const cname = await lookup(`ext.default.svc.${DOMAIN}`, 'CNAME');
    expect(cname).toMatch(new RegExp(`ext\\.default\\.svc\\.cluster\\.local\\s+canonical name = db\\.example\\.org`));
    // The ClusterIP Service resolves to its cluster IP, not to the pods.
    const clusterIP = (await kubectlOk(['get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
    const a = await lookup(`web.default.svc.${DOMAIN}`);
    expect([...a.slice(a.indexOf('Name:')).matchAll(/Address: *(\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1])).toEqual([clusterIP]);
  }, 120_000);

  it('a Job whose pod fetches the Service by name runs to completion, marked Complete by kube-controller-manager', async () => {
    await kubectlOk(['apply', '-f', '-'], {
      input: `apiVersion: batch/v1
kind: Job
metadata: { name: fetch }
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
${onCells}
      containers:
      - name: fetch
        image: ${registry.image}
        command: ["sh", "-c", "printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 5 web 80 | grep -q '^HTTP/1.[01] 200'"]
`,
    });
    let status = '';
    await waitFor(
      'the Job to be Complete',
      async () => {
        const j = JSON.parse(await kubectlOk(['get', 'job', 'fetch', '-o', 'json'])) as {
          status: { succeeded?: number; failed?: number; conditions?: { type: string; status: string }[] };
        };
        status = JSON.stringify(j.status);
        if (j.status.conditions?.some((c) => c.type === 'Failed' && c.status === 'True')) throw new Error(`the Job failed: ${status}`);
        return j.status.conditions?.some((c) => c.type === 'Complete' && c.status === 'True') ?? false;
      },
      { timeoutMs: 120_000, intervalMs: 1000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; job status ${status}\n${cl.controllerLog.split('\n').slice(-10).join('\n')}`);
    });
    const j = JSON.parse(await kubectlOk(['get', 'job', 'fetch', '-o', 'json'])) as { status: { succeeded?: number } };
    expect(j.status.succeeded).toBe(1);
  }, 180_000);
  it('a pod calls https://kubernetes.default.svc with its service-account token: allowed and forbidden by RBAC, a forged token refused', async () => {
    // The kubernetes Service's endpoint is the API server's advertised address, one cells reach.
    const slice = JSON.parse(await kubectlOk(['get', 'endpointslice', 'kubernetes', '-o', 'json'])) as { endpoints: { addresses: string[] }[]; ports: { port: number }[] };
    expect(slice.endpoints.flatMap((e) => e.addresses)).toEqual([hostAddress()]);
    const kubernetesIP = (await kubectlOk(['get', 'service', 'kubernetes', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
    expect(kubernetesIP).toBe('10.0.0.1');
    // A token the API server never issued: right issuer and subject, signed by another key.
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const b64url = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${b64url({ alg: 'RS256', kid: 'forged' })}.${b64url({
      iss: 'https://kubernetes.default.svc',
      aud: ['https://kubernetes.default.svc'],
      sub: 'system:serviceaccount:default:api-reader',
      iat: now,
      nbf: now,
      exp: now + 3600,
    })}`;
    const forged = `${unsigned}.${sign('sha256', Buffer.from(unsigned), privateKey).toString('base64url')}`;
    const api = 'https://kubernetes.default.svc/api/v1/namespaces';
    await kubectlOk(['apply', '-f', '-'], {
      input: `apiVersion: v1
kind: ServiceAccount
metadata: { name: api-reader }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: pod-reader }
rules: [{ apiGroups: [""], resources: [pods], verbs: [get, list] }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: api-reader-pods }
subjects: [{ kind: ServiceAccount, name: api-reader, namespace: default }]
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader }
---
apiVersion: v1
kind: Secret
metadata: { name: forged-token }
stringData: { token: "${forged}" }
---
apiVersion: v1
kind: Pod
metadata: { name: api-caller }
spec:
  serviceAccountName: api-reader
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  nodeSelector: { type: virtual-kubelet }
  tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]
  volumes: [{ name: forged, secret: { secretName: forged-token } }]
  containers:
  # Its own token (the projected kube-api-access volume) and the mounted CA, by the Service's
  # name (cluster DNS) and by KUBERNETES_SERVICE_HOST/PORT (what client-go's InClusterConfig uses).
  - name: caller
    image: ${apiClient}
    args:
    - ${api}/default/pods
    - "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods"
    - ${api}/kube-system/pods
    - ${api}/default/secrets
  - name: forged
    image: ${apiClient}
    args: [-token-file=/forged/token, "${api}/default/pods"]
    volumeMounts: [{ name: forged, mountPath: /forged, readOnly: true }]
`,
    });
    let phase = '';
    await waitFor(
      'the api-caller pod to finish',
      async () => {
        phase = (await kubectlOk(['get', 'pod', 'api-caller', '-o', 'jsonpath={.status.phase}'])).trim();
        return phase === 'Succeeded' || phase === 'Failed';
      },
      { timeoutMs: 180_000, intervalMs: 1000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; phase ${phase}\n${cl.controllerLog.split('\n').slice(-10).join('\n')}`);
    });
    const caller = await kubectlOk(['logs', 'api-caller', '-c', 'caller']);
    const forgedOut = await kubectlOk(['logs', 'api-caller', '-c', 'forged']);
    expect(phase, `${caller}\n${forgedOut}`).toBe('Succeeded');
    expect(caller).toContain(`KUBERNETES_SERVICE_HOST=${kubernetesIP} KUBERNETES_SERVICE_PORT=443\n`);
    expect(caller).toContain(`GET ${api}/default/pods 200\n`);
    expect(caller).toContain(`GET https://${kubernetesIP}:443/api/v1/namespaces/default/pods 200\n`);
    // The Role grants pods in default only: another namespace's pods and default's secrets are 403.
    expect(caller).toContain(`GET ${api}/kube-system/pods 403\n`);
    expect(caller).toContain(`GET ${api}/default/secrets 403\n`);
    expect(forgedOut).toContain(`GET ${api}/default/pods 401\n`);
  }, 240_000);

  it('DNS over UDP through the kube-dns Service: the cluster IP is DNATed to CoreDNS on another cell', async () => {
    // busybox's nslookup speaks UDP only; 10.0.0.10 is a cluster IP nothing but the client cell's
    // nftables leads anywhere (to the CoreDNS pod's cell).
    const clusterIP = (await kubectlOk(['get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
    const r = await kube.kubectl(['exec', 'client', '--', 'nslookup', '-type=A', `web.default.svc.${DOMAIN}`, DNS_IP], { timeoutMs: 30_000 });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).toContain(`Server:\t\t${DNS_IP}`);
    expect([...out.slice(out.indexOf('Name:')).matchAll(/Address: *(\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1])).toEqual([clusterIP]);
  }, 60_000);

  it("a NodePort Service is served on a cell's own address, from another cell's pod and from outside the cells", async () => {
    await kubectlOk(['apply', '-f', '-'], {
      input: `apiVersion: v1
kind: Service
metadata: { name: web-np }
spec:
  type: NodePort
  selector: { app: web }
  ports: [{ name: http, port: 80, targetPort: http }]
`,
    });
    const nodePort = Number((await kubectlOk(['get', 'service', 'web-np', '-o', 'jsonpath={.spec.ports[0].nodePort}'])).trim());
    expect(nodePort).toBeGreaterThanOrEqual(30000);
    // The CoreDNS pod's cell holds no web endpoint: its node port DNATs to other cells.
    const dnsCell = (await kubectlOk(['get', 'pods', '-n', 'kube-system', '-l', 'k8s-app=kube-dns', '-o', 'jsonpath={.items[0].status.podIP}'])).trim();
    expect(dnsCell).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    await waitRollout(3);
    expect(await waitAnswers(dnsCell, readyWebPodNames, `the node port ${dnsCell}:${nodePort} to answer the client pod`, 60_000, nodePort)).toHaveLength(3);
    // From this host (outside every cell), as a load balancer or another node would come.
    const names = await readyWebPodNames();
    let answers: string[] = [];
    await waitFor(
      `${dnsCell}:${nodePort} to answer this host`,
      async () => {
        answers = await Promise.all(Array.from({ length: 12 }, () => httpGetLastLine(dnsCell, nodePort)));
        return answers.every((a) => names.includes(a));
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; answers ${JSON.stringify(answers)}, replicas ${JSON.stringify(names)}`);
    });
  }, 180_000);

  it("pods reach each other across cells by pod IP, and reach a server on this host's own address", async () => {
    const pods = await waitRollout(3);
    for (const p of pods) expect(await fetchFromClient(p.status.podIP!, 2, 8080)).toEqual([p.metadata.name, p.metadata.name]);
    outside = createServer((_req, res) => res.end('outside\n'));
    await new Promise<void>((done) => outside.listen(0, hostAddress(), done));
    const port = (outside.address() as { port: number }).port;
    expect(await fetchFromClient(hostAddress(), 2, port)).toEqual(['outside', 'outside']);
  }, 120_000);
});
