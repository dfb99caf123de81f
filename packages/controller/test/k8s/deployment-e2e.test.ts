// The real Deployment of the controller (issue 20): the controller image built by
// scripts/package/package-controller-image.mjs and pushed to a test registry, deploy/base applied
// with kustomize (an overlay sets the image and what this harness needs), started as a pod by a
// real kubelet (v1.34.4) on Debian's containerd; the controller registers its virtual node and
// runs a tolerating pod on a cell, whose output `kubectl logs` reads through the virtual node.
//
// What the overlay changes, and why (docs/operations.md, "The Deployment in the test harness"):
// the cells are the local provider's (cell-agent processes on this machine, runc), which the
// controller image does not hold: the pod runs privileged, as root, in the host's network and
// PID namespaces, with the host's root mounted at /host, and starts each agent with the host's
// chroot into /host. The API server is reached at its loopback address (no kube-proxy here).
// On a cloud provider none of that applies: deploy/base runs as is (non-root, no host access).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  freePort,
  hostAddress,
  KUBE_CONTROLLERS,
  pushBusybox,
  pushPause,
  startContainerd,
  startKubeApiserver,
  startKubelet,
  startRegistry,
  waitFor,
  type Containerd,
  type KubeApiserver,
  type Kubelet,
  type RegistryServer,
} from '@cello/testkit';
import { stringify } from 'yaml';
import { LocalProvider } from '../../src/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const NODE = 'containerd-node';
const VNODE = 'cello-deployed';

let registry: RegistryServer;
let kube: KubeApiserver;
let containerd: Containerd;
let kubelet: Kubelet;
let work: string;
let cells: string;
let image: string;
let busybox: string;
let imageSeconds = 0;
let controllerId = '';
/** Whether the host had the agents' Service table before: host-network cells program it in the host's namespace. */
let hadServiceTable = true;

const diagnostics = () => `\n--- kubelet:\n${kubelet?.logs().slice(-2500)}\n--- containerd:\n${containerd?.logs().slice(-1500)}\n--- control plane:\n${kube?.logs().slice(-1500)}`;

async function kubectlOk(args: string[], o: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await kube.kubectl(args, o);
  expect(r.code, `kubectl ${args.join(' ')}: ${r.stderr}${diagnostics()}`).toBe(0);
  return r.stdout;
}

async function controllerLogs(): Promise<string> {
  const r = await kube.kubectl(['-n', 'cello-system', 'logs', 'deployment/cello-controller', '--tail=60']);
  return r.stdout + r.stderr;
}

beforeAll(async () => {
  hadServiceTable = spawnSync('nft', ['list', 'table', 'inet', 'cello'], { stdio: 'ignore' }).status === 0;
  work = mkdtempSync(join(tmpdir(), 'cello-deploy-e2e-'));
  cells = join(work, 'cells');
  mkdirSync(cells);
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  const t0 = Date.now();
  const built = spawnSync(process.execPath, [join(REPO, 'scripts', 'package', 'package-controller-image.mjs'), '--push', `${registry.host}/cello/controller:e2e`, '--plain-http'], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (built.status !== 0) throw new Error(`package-controller-image failed (exit ${built.status}): ${built.stderr.slice(-3000)}`);
  imageSeconds = (Date.now() - t0) / 1000;
  image = built.stdout.trim();
  // The PersistentVolumeClaim of deploy/base binds to a PersistentVolume the test provides.
  kube = await startKubeApiserver({ controllers: [...KUBE_CONTROLLERS, 'persistentvolume-binder-controller'] });
  containerd = await startContainerd({ sandboxImage: pause, insecureRegistries: [registry.host] });
  kubelet = await startKubelet({ apiserver: kube, runtimeEndpoint: containerd.socket, nodeName: NODE, readyTimeoutMs: 120_000 });
}, 30 * 60_000);

afterAll(async () => {
  if (kube) {
    // Cell pods first (the controller ends their cells), then the controller.
    await kube.kubectl(['delete', 'pod', '--all', '-n', 'default', '--wait=true', '--timeout=90s'], { timeoutMs: 100_000 }).catch(() => undefined);
    await kube.kubectl(['-n', 'cello-system', 'delete', 'deployment', 'cello-controller', '--wait=true', '--timeout=60s'], { timeoutMs: 70_000 }).catch(() => undefined);
    await waitFor('the controller pod to end', async () => (await kube.kubectl(['-n', 'cello-system', 'get', 'pods', '-o', 'name'])).stdout.trim() === '', {
      timeoutMs: 60_000,
      intervalMs: 500,
    }).catch(() => undefined);
  }
  await kubelet?.stop();
  await containerd?.stop();
  await kube?.stop();
  await registry?.stop();
  // Whatever cell a failed run left: the local provider's own cleanup (agents, runc containers, mounts).
  if (controllerId) {
    const provider = new LocalProvider({ root: cells });
    const owned = await provider.listOwned(controllerId).catch(() => []);
    if (owned.length) await provider.terminate(owned.map((i) => i.instanceId)).catch(() => undefined);
  }
  if (!hadServiceTable) spawnSync('nft', ['delete', 'table', 'inet', 'cello'], { stdio: 'ignore' });
  if (work) rmSync(work, { recursive: true, force: true });
}, 300_000);

/** The overlay: deploy/base with the pushed image and what this harness needs (see the header). */
async function writeOverlay(): Promise<string> {
  const dir = join(work, 'overlay');
  mkdirSync(dir);
  const apiPort = await freePort();
  const metricsPort = await freePort();
  const kubeletPort = await freePort();
  const apiServer = new URL(kube.server);
  const m = /^(.+)@(sha256:[0-9a-f]{64})$/.exec(image);
  if (!m) throw new Error(`package-controller-image printed ${image}, not REPO@sha256:DIGEST`);
  controllerId = `deploy-e2e-${randomBytes(3).toString('hex')}`;
  const controllerYaml = {
    controllerId,
    api: { listen: `127.0.0.1:${apiPort}` },
    // The kubelet probes readiness at the pod's IP: with hostNetwork, the node's (this host's) address.
    metrics: { listen: `${hostAddress()}:${metricsPort}` },
    store: { kind: 'embedded', dir: '/var/lib/cello/store' },
    provider: {
      kind: 'local',
      root: cells,
      network: 'host',
      // The agent runs in the host's root (the image has no runc, no agent): the host's chroot
      // binary runs with the image's glibc (both Debian 12's).
      agentCommand: ['/host/usr/sbin/chroot', '/host', process.execPath, join(REPO, 'packages', 'cell-agent', 'dist', 'cli.js')],
      insecureRegistries: [registry.host],
    },
    security: { mode: 'mtls', encryptionKeyFile: '/etc/cello/secrets/encryption-key' },
    warmPool: [],
    timeouts: { bootSeconds: 90 },
    kubernetes: {
      enabled: true,
      nodeName: VNODE,
      internalIP: '127.0.0.1',
      kubelet: {
        listen: `127.0.0.1:${kubeletPort}`,
        certFile: '/etc/cello/kubelet-tls/tls.crt',
        keyFile: '/etc/cello/kubelet-tls/tls.key',
        clientCAFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
      },
      podApiServer: { host: apiServer.hostname, port: Number(apiServer.port) },
      leaderElection: { enabled: true, namespace: 'cello-system', name: 'cello-virtual-node' },
    },
  };
  const c = '/spec/template/spec/containers/0';
  const patch = [
    { op: 'replace', path: '/spec/template/spec/securityContext', value: { runAsUser: 0, runAsGroup: 0, runAsNonRoot: false, seccompProfile: { type: 'Unconfined' } } },
    { op: 'add', path: '/spec/template/spec/hostNetwork', value: true },
    { op: 'add', path: '/spec/template/spec/hostPID', value: true },
    { op: 'add', path: '/spec/template/spec/dnsPolicy', value: 'ClusterFirstWithHostNet' },
    { op: 'replace', path: `${c}/securityContext`, value: { privileged: true } },
    {
      op: 'replace',
      path: `${c}/ports`,
      value: [
        { name: 'api', containerPort: apiPort },
        { name: 'metrics', containerPort: metricsPort },
        { name: 'kubelet', containerPort: kubeletPort },
      ],
    },
    // The agents run in the host's root with the controller's PATH: the image's own directories
    // first, then the host's (runc, nft, nsenter), which do not exist in the image.
    { op: 'add', path: `${c}/env/-`, value: { name: 'PATH', value: '/opt/cello/bin:/opt/cello/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' } },
    // No kube-proxy in the harness: the Service address would lead nowhere.
    { op: 'add', path: `${c}/env/-`, value: { name: 'KUBERNETES_SERVICE_HOST', value: apiServer.hostname } },
    { op: 'add', path: `${c}/env/-`, value: { name: 'KUBERNETES_SERVICE_PORT', value: apiServer.port } },
    { op: 'add', path: `${c}/volumeMounts/-`, value: { name: 'host', mountPath: '/host' } },
    { op: 'add', path: `${c}/volumeMounts/-`, value: { name: 'cells', mountPath: cells } },
    { op: 'add', path: '/spec/template/spec/volumes/-', value: { name: 'host', hostPath: { path: '/', type: 'Directory' } } },
    { op: 'add', path: '/spec/template/spec/volumes/-', value: { name: 'cells', hostPath: { path: cells, type: 'Directory' } } },
  ];
  writeFileSync(join(dir, 'deployment-patch.json'), JSON.stringify(patch));
  writeFileSync(
    join(dir, 'controller-config.yaml'),
    stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cello-controller', namespace: 'cello-system' }, data: { 'controller.yaml': stringify(controllerYaml) } }),
  );
  writeFileSync(
    join(dir, 'kustomization.yaml'),
    stringify({
      apiVersion: 'kustomize.config.k8s.io/v1beta1',
      kind: 'Kustomization',
      resources: [relative(dir, join(REPO, 'deploy', 'base'))],
      images: [{ name: 'cello/controller', newName: m[1], digest: m[2] }],
      patches: [{ path: 'deployment-patch.json', target: { kind: 'Deployment', name: 'cello-controller' } }, { path: 'controller-config.yaml' }],
    }),
  );
  return dir;
}

describe('the controller Deployment on a real kubelet and containerd', () => {
  it('deploy/base runs the pushed image, the virtual node registers, and a tolerating pod runs on a cell', async () => {
    console.log(`controller image built and pushed in ${imageSeconds.toFixed(0)} s: ${image}`);
    // What deploy/base references but does not ship: its Secrets, and a volume for its claim.
    const store = join(work, 'store');
    mkdirSync(store);
    const tls = await kube.issueCert('cello-virtual-kubelet', { cn: VNODE, ips: ['127.0.0.1'] });
    await kubectlOk(['create', 'namespace', 'cello-system']);
    await kubectlOk(['-n', 'cello-system', 'create', 'secret', 'generic', 'cello-controller-secrets', `--from-literal=encryption-key=${randomBytes(32).toString('base64')}`]);
    await kubectlOk(['-n', 'cello-system', 'create', 'secret', 'tls', 'cello-kubelet-tls', `--cert=${tls.certFile}`, `--key=${tls.keyFile}`]);
    await kubectlOk(['apply', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: 'v1',
        kind: 'PersistentVolume',
        metadata: { name: 'cello-store' },
        spec: {
          capacity: { storage: '1Gi' },
          accessModes: ['ReadWriteOnce'],
          persistentVolumeReclaimPolicy: 'Retain',
          storageClassName: '',
          hostPath: { path: store, type: 'Directory' },
        },
      }),
    });

    const t0 = Date.now();
    const applied = await kubectlOk(['apply', '-k', await writeOverlay()], { timeoutMs: 60_000 });
    expect(applied).toContain('deployment.apps/cello-controller created');
    const deployed = JSON.parse(await kubectlOk(['-n', 'cello-system', 'get', 'deployment', 'cello-controller', '-o', 'json'])) as {
      spec: { template: { spec: { containers: { image: string }[] } } };
    };
    expect(deployed.spec.template.spec.containers[0]!.image).toBe(image);

    await waitFor(
      'the controller pod to be Ready on the containerd node',
      async () => {
        const r = await kube.kubectl([
          '-n',
          'cello-system',
          'get',
          'pods',
          '-l',
          'app=cello-controller',
          '-o',
          'jsonpath={.items[0].spec.nodeName} {.items[0].status.conditions[?(@.type=="Ready")].status}',
        ]);
        return r.stdout === `${NODE} True`;
      },
      { timeoutMs: 240_000, intervalMs: 1000 },
    ).catch(async (err: Error) => {
      const pods = await kube.kubectl(['-n', 'cello-system', 'get', 'pods,pvc,events', '-o', 'wide']);
      throw new Error(`${err.message}\n${pods.stdout}${pods.stderr}\n--- controller:\n${await controllerLogs()}${diagnostics()}`);
    });
    console.log(`kubectl apply -k -> controller pod Ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // It runs the image the registry holds, by digest, under containerd.
    const status = JSON.parse(await kubectlOk(['-n', 'cello-system', 'get', 'pods', '-l', 'app=cello-controller', '-o', 'json'])) as {
      items: { status: { containerStatuses: { imageID: string; containerID: string }[] } }[];
    };
    expect(status.items[0]!.status.containerStatuses[0]!.containerID).toMatch(/^containerd:\/\//);
    expect(status.items[0]!.status.containerStatuses[0]!.imageID).toContain(image.slice(image.indexOf('@')));

    await waitFor(
      'the virtual node to be Ready',
      async () => /"status":"True"/.test((await kube.kubectl(['get', 'node', VNODE, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")]}'])).stdout),
      { timeoutMs: 120_000, intervalMs: 1000 },
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}\n--- controller:\n${await controllerLogs()}`);
    });
    const vnode = JSON.parse(await kubectlOk(['get', 'node', VNODE, '-o', 'json'])) as { spec: { taints: { key: string }[] } };
    expect(vnode.spec.taints.map((t) => t.key)).toContain('virtual-kubelet.io/provider');

    await kubectlOk(['apply', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'on-a-cell', namespace: 'default' },
        spec: {
          nodeSelector: { 'kubernetes.io/hostname': VNODE },
          tolerations: [{ key: 'virtual-kubelet.io/provider', operator: 'Exists', effect: 'NoSchedule' }],
          automountServiceAccountToken: false,
          containers: [{ name: 'main', image: busybox, command: ['sh', '-c', 'echo "hello from a cell"; exec sleep 3600'] }],
        },
      }),
    });
    await waitFor(
      'the pod on the virtual node to be Running',
      async () => (await kube.kubectl(['get', 'pod', 'on-a-cell', '-o', 'jsonpath={.spec.nodeName} {.status.phase}'])).stdout === `${VNODE} Running`,
      { timeoutMs: 180_000, intervalMs: 1000 },
    ).catch(async (err: Error) => {
      const pod = await kube.kubectl(['get', 'pod', 'on-a-cell', '-o', 'yaml']);
      throw new Error(`${err.message}\n${pod.stdout}\n--- controller:\n${await controllerLogs()}`);
    });
    // Its cell is a local cell of the deployed controller.
    expect(readdirSync(cells).filter((d) => !d.startsWith('.'))).toHaveLength(1);
    await waitFor('kubectl logs through the virtual node', async () => (await kube.kubectl(['logs', 'on-a-cell'])).stdout.includes('hello from a cell'), {
      timeoutMs: 30_000,
      intervalMs: 500,
    });

    await kubectlOk(['delete', 'pod', 'on-a-cell', '--wait=true', '--timeout=120s'], { timeoutMs: 130_000 });
    await waitFor('the cell to end', () => readdirSync(cells).filter((d) => !d.startsWith('.')).length === 0, { timeoutMs: 90_000, intervalMs: 500 });
  }, 900_000);
});
