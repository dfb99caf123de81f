// deploy/base and deploy/overlays/etcd against the harness's real kube-apiserver: each builds with
// kustomize, its ConfigMap is a valid controller configuration whose every file lies on a volume
// the Deployment mounts, its NetworkPolicy admits the ports the configuration listens on and no
// other, and the API server accepts every object (`kubectl apply --dry-run=server`). Applied,
// the ServiceAccount passes the preflight's SelfSubjectAccessReview list with its own token, and
// is refused what it must not do.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kubeconfigFor, startKubeApiserver, type KubeApiserver } from '@cello/testkit';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { rbacPreflight, virtualNodePermissions, type Permission } from '../../src/preflight/kube-rbac.js';

const DEPLOY = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'deploy');

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  data?: Record<string, string>;
  spec?: Record<string, unknown>;
}

let kube: KubeApiserver;
beforeAll(async () => {
  kube = await startKubeApiserver({ controllerManager: false, timeoutMs: 120_000 });
  // The namespace exists for real, so a dry run of the objects in it is judged as an apply would be.
  const ns = await kube.kubectl(['create', 'namespace', 'cello-system']);
  expect(ns.code, ns.stderr).toBe(0);
}, 180_000);
afterAll(async () => {
  await kube?.stop();
});

async function build(dir: string): Promise<{ text: string; objs: Obj[] }> {
  const r = await kube.kubectl(['kustomize', join(DEPLOY, dir)]);
  expect(r.code, r.stderr).toBe(0);
  return { text: r.stdout, objs: parseAllDocuments(r.stdout).map((d) => d.toJSON() as Obj) };
}

const one = (objs: Obj[], kind: string) => {
  const found = objs.filter((o) => o.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0]!;
};

type Container = { name: string; image: string; volumeMounts: { name: string; mountPath: string }[]; ports: { containerPort: number }[] };
type PodSpec = { containers: Container[]; volumes: { name: string; [k: string]: unknown }[] };

/** Every file and directory the configuration names, each under some mount of the container. */
function configPaths(cfg: Config): string[] {
  const k = cfg.kubernetes!;
  const paths = [cfg.security.encryptionKeyFile!, k.kubelet.certFile!, k.kubelet.keyFile!, k.kubelet.clientCAFile!];
  if (cfg.store.kind === 'embedded') paths.push(cfg.store.dir);
  else paths.push(cfg.store.tls!.caFile, cfg.store.tls!.certFile!, cfg.store.tls!.keyFile!);
  return paths;
}

const port = (listen: string) => Number(listen.slice(listen.lastIndexOf(':') + 1));

function checkManifests(objs: Obj[], store: 'embedded' | 'etcd') {
  const cm = one(objs, 'ConfigMap');
  const cfg = parseConfig(parseAllDocuments(cm.data!['controller.yaml']!)[0]!.toJSON(), 'controller.yaml');
  expect(cfg.store.kind).toBe(store);
  const dep = one(objs, 'Deployment');
  const spec = (dep.spec as { template: { spec: PodSpec }; replicas: number }).template.spec;
  const c = spec.containers.find((x) => x.name === 'controller')!;
  // The kustomize image entry names the image.
  expect(c.image).toBe('cello/controller:0.1.0');
  const mounts = c.volumeMounts.map((m) => m.mountPath);
  for (const p of configPaths(cfg)) expect(mounts.some((m) => p === m || p.startsWith(`${m}/`)) || p.startsWith('/var/run/secrets/kubernetes.io/'), `${p} is mounted`).toBe(true);
  // Every mount has its volume, and every volume is mounted.
  expect(new Set(c.volumeMounts.map((m) => m.name))).toEqual(new Set(spec.volumes.map((v) => v.name)));
  const pvc = objs.filter((o) => o.kind === 'PersistentVolumeClaim');
  if (store === 'embedded') {
    expect((dep.spec as { replicas: number }).replicas).toBe(1);
    expect((dep.spec as { strategy: { type: string } }).strategy.type).toBe('Recreate');
    expect(pvc.map((p) => p.metadata.name)).toEqual(['cello-controller-store']);
    expect(spec.volumes.find((v) => v.name === 'store')).toMatchObject({ persistentVolumeClaim: { claimName: 'cello-controller-store' } });
  } else {
    expect((dep.spec as { replicas: number }).replicas).toBe(2);
    expect(pvc).toEqual([]);
    expect(cfg.kubernetes!.leaderElection.enabled).toBe(true);
  }
  // Listening ports = container ports = the NetworkPolicy's admitted ports.
  const listens = [port(cfg.api.listen), port(cfg.metrics.listen), port(cfg.kubernetes!.kubelet.listen)].sort();
  expect(c.ports.map((p) => p.containerPort).sort()).toEqual(listens);
  const np = one(objs, 'NetworkPolicy').spec as { policyTypes: string[]; podSelector: { matchLabels: Record<string, string> }; ingress: { ports: { port: number }[] }[] };
  expect(np.policyTypes).toEqual(['Ingress']);
  expect(np.podSelector.matchLabels).toEqual({ app: 'cello-controller' });
  expect(np.ingress.flatMap((r) => r.ports.map((p) => p.port)).sort()).toEqual(listens);
  // Secrets come by reference only: no Secret object ships with the manifests.
  expect(objs.filter((o) => o.kind === 'Secret')).toEqual([]);
  return cfg;
}

describe('deploy/ manifests', () => {
  for (const [dir, store] of [
    ['base', 'embedded'],
    ['overlays/etcd', 'etcd'],
  ] as const) {
    it(`${dir}: builds, is consistent with its configuration, and the API server accepts it (dry run)`, async () => {
      const { text, objs } = await build(dir);
      checkManifests(objs, store);
      const dry = await kube.kubectl(['apply', '--dry-run=server', '-f', '-'], { input: text, timeoutMs: 60_000 });
      expect(dry.code, dry.stderr).toBe(0);
      expect(dry.stdout).toMatch(/deployment\.apps\/cello-controller (created|configured|unchanged) \(server dry run\)/);
      expect(dry.stdout).toMatch(/networkpolicy\.networking\.k8s\.io\/cello-controller .*\(server dry run\)/);
      // A dry run writes nothing.
      expect((await kube.kubectl(['-n', 'cello-system', 'get', 'deployment', 'cello-controller'])).code).not.toBe(0);
    }, 120_000);
  }

  it("the ServiceAccount's RBAC passes every check of the preflight, with its own token, and no more", async () => {
    const { text, objs } = await build('base');
    const cfg = checkManifests(objs, 'embedded');
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: text, timeoutMs: 60_000 });
    expect(applied.code, applied.stderr).toBe(0);
    const token = (await kube.kubectl(['-n', 'cello-system', 'create', 'token', 'cello-controller'])).stdout.trim();
    expect(token).toMatch(/^ey/);
    const rest = new KubeRest(loadKubeConfig(await kubeconfigFor(kube, 'sa', { token })), 'deploy-test');
    const perms = virtualNodePermissions(cfg.kubernetes!);
    const rs = await rbacPreflight(rest, perms);
    expect(rs).toHaveLength(perms.length);
    expect(rs.filter((r) => r.status !== 'ok')).toEqual([]);
    // What the virtual node never needs stays refused.
    const beyond: Permission[] = [
      { verb: 'list', group: '', resource: 'secrets', why: 'x' },
      { verb: 'create', group: '', resource: 'pods', why: 'x' },
      { verb: 'create', group: '', resource: 'pods', subresource: 'exec', why: 'x' },
      { verb: 'delete', group: '', resource: 'nodes', why: 'x' },
      { verb: 'create', group: 'rbac.authorization.k8s.io', resource: 'clusterrolebindings', why: 'x' },
      { verb: 'update', group: 'coordination.k8s.io', resource: 'leases', namespace: 'kube-system', why: 'x' },
    ];
    const refused = await rbacPreflight(rest, beyond);
    expect(refused.map((r) => `${r.check}: ${r.status}`)).toEqual(beyond.map((p) => expect.stringMatching(new RegExp(`^rbac: ${p.verb} .*: fail$`))));
  }, 120_000);
});
