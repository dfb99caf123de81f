// Kubelet behaviours the conformance suite checks, on the virtual node against the harness's
// real kube-apiserver, the controller daemon and real local cells (runc): the downward API's
// status.podIP(s)/hostIP(s), service links, automountServiceAccountToken at pod and
// ServiceAccount level, readiness gates, kubectl debug's ephemeral containers (run on the cell),
// and the kubelet API's /runningpods/ with its attackers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:https';
import { startKubeApiserver, waitFor, type IssuedCert, type KubeApiserver } from '@cello/testkit';
import { startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { KubeCluster } from '../helpers/kube-cluster.js';
import { kubePods } from '../helpers/kube-pods.js';

const NODE = 'cello-conf';

interface Pod {
  metadata: { uid: string };
  spec: { volumes?: { name: string }[] };
  status: {
    phase?: string;
    podIP?: string;
    podIPs?: { ip: string }[];
    hostIP?: string;
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
    containerStatuses?: { name: string; restartCount: number }[];
    ephemeralContainerStatuses?: {
      name: string;
      restartCount: number;
      ready: boolean;
      state: { waiting?: { reason?: string; message?: string }; running?: object; terminated?: { exitCode: number } };
    }[];
  };
}

let registry: Registry;
let kube: KubeApiserver;
let cl: KubeCluster;

const { getPod, waitPod } = kubePods<Pod>(
  () => kube,
  () => cl.controllerLog,
  { timeoutMs: 120_000 },
);

const condition = (p: Pod, type: string) => p.status.conditions?.find((c) => c.type === type);

function kubelet(path: string, who: { cert?: IssuedCert }): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: cl.kubeletPort, path, ca: kube.ca, servername: NODE, timeout: 10_000, ...(who.cert ? { cert: who.cert.cert, key: who.cert.key } : {}) },
      (res) => {
        let body = '';
        res.on('data', (b: Buffer) => (body += b.toString()));
        res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  registry = await startFixtureRegistry();
  kube = await startKubeApiserver();
  await kube.kubectl(['create', 'namespace', 'cello-system']);
  const serving = await kube.issueCert('kubelet-serving', { cn: NODE, ips: ['127.0.0.1'], dns: [NODE] });
  cl = new KubeCluster({ registry, warm: 0, healthSeconds: 5, gcIntervalSeconds: 2, retainFinishedSeconds: 0 }, kube, serving, { nodeName: NODE, maxCells: 4 });
  await cl.start();
  await cl.waitNodeRegistered();
}, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries

afterAll(async () => {
  await cl?.stop();
  await kube?.stop();
  await registry?.server.stop();
}, 60_000);

describe('kubelet behaviours on the virtual node', () => {
  it('downward API status.podIP(s)/hostIP(s) and spec.nodeName, service links, and no token with automountServiceAccountToken: false on the pod', async () => {
    const svc = await kube.kubectl(['create', 'service', 'clusterip', 'linked-svc', '--tcp=8765:8080']);
    expect(svc.code, svc.stderr).toBe(0);
    const pod = `apiVersion: v1
kind: Pod
metadata: { name: dapi }
spec:
  nodeName: ${NODE}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ${registry.image}
    command: ["sh", "-c", "sleep 1000"]
    env:
    - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
    - { name: POD_IPS, valueFrom: { fieldRef: { fieldPath: status.podIPs } } }
    - { name: HOST_IP, valueFrom: { fieldRef: { fieldPath: status.hostIP } } }
    - { name: HOST_IPS, valueFrom: { fieldRef: { fieldPath: status.hostIPs } } }
    - { name: NODE_NAME, valueFrom: { fieldRef: { fieldPath: spec.nodeName } } }
`;
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: pod });
    expect(applied.code, applied.stderr).toBe(0);
    const p = await waitPod('dapi', 'Running', (x) => x.status.phase === 'Running');
    const env = new Map(
      (await kube.kubectl(['exec', 'dapi', '--', 'env'])).stdout
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const),
    );
    expect(env.get('POD_IP')).toBe(p.status.podIP);
    expect(env.get('POD_IPS')).toBe(p.status.podIPs!.map((x) => x.ip).join(','));
    // One host IP for the pod: its cell's, on the Pod object as in its env (where its hostPorts are).
    expect(env.get('HOST_IP')).toBe(p.status.hostIP);
    expect(env.get('HOST_IPS')).toBe(env.get('HOST_IP'));
    expect(env.get('NODE_NAME')).toBe(NODE);
    // Service links of the pod's namespace, as envvars.FromServices writes them.
    const ip = (await kube.kubectl(['get', 'service', 'linked-svc', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim();
    expect(env.get('LINKED_SVC_SERVICE_HOST')).toBe(ip);
    expect(env.get('LINKED_SVC_PORT_8765_TCP')).toBe(`tcp://${ip}:8765`);
    // No token volume, and nothing at the token's path.
    expect((p.spec.volumes ?? []).filter((v) => v.name.startsWith('kube-api-access-'))).toEqual([]);
    expect((await kube.kubectl(['exec', 'dapi', '--', 'ls', '/var/run/secrets/kubernetes.io/serviceaccount'])).code).not.toBe(0);
  }, 240_000);

  it("readiness gates hold Ready until their condition is True, and the gate's condition is left alone; automountServiceAccountToken: false on the ServiceAccount", async () => {
    const sa = await kube.kubectl(['apply', '-f', '-'], { input: 'apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: quiet }\nautomountServiceAccountToken: false\n' });
    expect(sa.code, sa.stderr).toBe(0);
    const pod = `apiVersion: v1
kind: Pod
metadata: { name: gated }
spec:
  nodeName: ${NODE}
  serviceAccountName: quiet
  terminationGracePeriodSeconds: 1
  readinessGates: [{ conditionType: example.com/gate }]
  containers: [{ name: main, image: ${registry.image}, command: ["sh", "-c", "sleep 1000"] }]
`;
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: pod });
    expect(applied.code, applied.stderr).toBe(0);
    const held = await waitPod('gated', 'Running with its containers ready', (x) => x.status.phase === 'Running' && condition(x, 'ContainersReady')?.status === 'True');
    expect((held.spec.volumes ?? []).filter((v) => v.name.startsWith('kube-api-access-'))).toEqual([]);
    const notReady = await waitPod('gated', 'held not Ready by its gate', (x) => condition(x, 'Ready')?.reason === 'ReadinessGatesNotReady');
    expect(condition(notReady, 'Ready')).toMatchObject({ status: 'False', message: 'corresponding condition of pod readiness gate "example.com/gate" does not exist.' });

    const gate = (status: string) =>
      kube.kubectl(['patch', 'pod', 'gated', '--subresource=status', '--type=strategic', '-p', JSON.stringify({ status: { conditions: [{ type: 'example.com/gate', status }] } })]);
    let r = await gate('False');
    expect(r.code, r.stderr).toBe(0);
    await waitPod(
      'gated',
      'not Ready with the gate False',
      (x) => condition(x, 'Ready')?.message === 'the status of pod readiness gate "example.com/gate" is not "True", but False',
    );
    r = await gate('True');
    expect(r.code, r.stderr).toBe(0);
    const ready = await waitPod('gated', 'Ready once the gate is True', (x) => condition(x, 'Ready')?.status === 'True');
    // Still there after the node's own status writes.
    expect(condition(ready, 'example.com/gate')?.status).toBe('True');
    await new Promise((res) => setTimeout(res, 3000));
    const later = (await getPod('gated'))!;
    expect(condition(later, 'example.com/gate')?.status).toBe('True');
    expect(condition(later, 'Ready')?.status).toBe('True');
  }, 240_000);

  it('/runningpods/ lists the running pods with their running containers; an unauthenticated caller gets 401, one without RBAC 403', async () => {
    const dapi = (await getPod('dapi'))!;
    const r = await kubelet('/runningpods/', { cert: kube.kubeletClient });
    expect(r.code, r.body).toBe(200);
    const list = JSON.parse(r.body) as {
      kind: string;
      items: { metadata: { name: string; namespace: string; uid: string }; spec: { containers: { name: string; image: string }[] } }[];
    };
    expect(list.kind).toBe('PodList');
    expect(list.items.map((i) => i.metadata.name)).toEqual(['dapi', 'gated']);
    expect(list.items[0]).toMatchObject({
      metadata: { name: 'dapi', namespace: 'default', uid: dapi.metadata.uid },
      spec: { containers: [{ name: 'main', image: registry.image }] },
    });
    expect((await kubelet('/runningpods/', {})).code).toBe(401);
    const mallory = await kube.issueCert('mallory', { cn: 'mallory' });
    const denied = await kubelet('/runningpods/', { cert: mallory });
    expect(denied.code).toBe(403);
    expect(denied.body).toContain('user=mallory');
    expect(denied.body).toContain('subresource=proxy');
  }, 60_000);

  it("kubectl debug: the ephemeral container runs once on the pod's cell in its target's PID namespace, is reported, takes exec, and the pod runs on", async () => {
    const r = await kube.kubectl(['debug', 'dapi', `--image=${registry.image}`, '--container=debugger', '--target=main', '--', 'sh', '-c', 'ps -o args; exit 7']);
    expect(r.code, r.stderr).toBe(0);
    const p = await waitPod('dapi', 'reporting its ephemeral container ended', (x) => x.status.ephemeralContainerStatuses?.[0]?.state.terminated !== undefined, 90_000);
    const st = p.status.ephemeralContainerStatuses![0]!;
    expect([st.name, st.state.terminated!.exitCode, st.restartCount, st.ready]).toEqual(['debugger', 7, 0, false]);
    // It saw the target's processes (its PID namespace) and its logs come from the cell.
    expect((await kube.kubectl(['logs', 'dapi', '-c', 'debugger'])).stdout).toContain('sleep 1000');
    expect(p.status.phase).toBe('Running');
    expect(condition(p, 'Ready')?.status).toBe('True');
    // A second one keeps running and takes exec; the first is not run again (restartPolicy Always or not).
    const r2 = await kube.kubectl(['debug', 'dapi', `--image=${registry.image}`, '--container=shell', '--', 'sleep', '1000']);
    expect(r2.code, r2.stderr).toBe(0);
    await waitPod(
      'dapi',
      'running its second ephemeral container',
      (x) => x.status.ephemeralContainerStatuses?.find((c) => c.name === 'shell')?.state.running !== undefined,
      90_000,
    );
    const ex = await kube.kubectl(['exec', 'dapi', '-c', 'shell', '--', 'sh', '-c', 'echo from-$0-$$', 'shell']);
    expect(ex.stdout.trim(), ex.stderr).toMatch(/^from-shell-\d+$/);
    const after = (await getPod('dapi'))!;
    expect(after.status.ephemeralContainerStatuses!.find((c) => c.name === 'debugger')!.restartCount).toBe(0);
    expect(after.status.containerStatuses!.map((c) => [c.name, c.restartCount])).toEqual([['main', 0]]);
    // The pod keeps getting updates: a label change still applies in place.
    expect((await kube.kubectl(['label', 'pod', 'dapi', 'touched=yes'])).code).toBe(0);
    await waitFor(
      'the label update to be applied',
      async () => (await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=dapi,reason=Updated', '-o', 'name'])).stdout.trim() !== '',
      { timeoutMs: 30_000, intervalMs: 300 },
    );
    expect((await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=dapi,reason=FailedUpdate', '-o', 'jsonpath={.items[*].message}'])).stdout.trim()).toBe(
      '',
    );
  }, 240_000);

  it('host ports are admitted as the kubelet does: a pod bound by nodeName that wants a port another running pod holds is rejected (Failed, NodePorts) without a cell; another protocol, or the port once freed, runs', async () => {
    const pod = (name: string, protocol: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  nodeName: ${NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ${registry.image}
    command: ["sh", "-c", "sleep 1000"]
    ports: [{ containerPort: 21017, hostPort: 21017, protocol: ${protocol} }]
`;
    const apply = async (name: string, protocol = 'TCP') => {
      const r = await kube.kubectl(['apply', '-f', '-'], { input: pod(name, protocol) });
      expect(r.code, r.stderr).toBe(0);
    };
    await apply('port-holder');
    await waitPod('port-holder', 'Running', (x) => x.status.phase === 'Running');
    await apply('port-taker');
    const rejected = await waitPod('port-taker', 'rejected', (x) => x.status.phase === 'Failed');
    expect(rejected.status).toMatchObject({ phase: 'Failed', reason: 'NodePorts' });
    expect((rejected.status as { message?: string }).message).toContain(
      "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports (TCP 0.0.0.0:21017 is held by pod port-holder)",
    );
    const reasons = (await kube.kubectl(['get', 'events', '--field-selector', 'involvedObject.name=port-taker', '-o', 'jsonpath={.items[*].reason}'])).stdout;
    expect(reasons).toContain('NodePorts');
    expect(reasons).not.toContain('CellRequested');
    // The same port over UDP is another port.
    await apply('port-udp', 'UDP');
    await waitPod('port-udp', 'Running', (x) => x.status.phase === 'Running');
    // Once the holder is gone, the port is free again (a new pod; a rejected one stays Failed, as with the kubelet).
    const del = await kube.kubectl(['delete', 'pod', 'port-holder', '--grace-period=0', '--force']);
    expect(del.code, del.stderr).toBe(0);
    await waitFor('port-holder to be gone', async () => (await getPod('port-holder')) === undefined, { timeoutMs: 60_000, intervalMs: 300 });
    await apply('port-next');
    await waitPod('port-next', 'Running', (x) => x.status.phase === 'Running');
    expect((await getPod('port-taker'))!.status.phase).toBe('Failed');
  }, 300_000);
});
