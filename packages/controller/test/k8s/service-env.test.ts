// KUBERNETES_SERVICE_* in a pod's containers: the `default/kubernetes` Service's cluster IP and
// port, as the kubelet's envvars.FromServices writes them, read from the Services table the
// controller streams to cells (a real kube-apiserver, which keeps that Service itself, and the
// controller's real watch); the kubeconfig's server only for a cluster without the Service.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { startKubeApiserver, waitFor, type KubeApiserver } from '@cello/testkit';
import { ClusterService, Protocol } from '@cello/proto/cell';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { buildPodManifest, type KPod } from '../../src/k8s/node/manifest.js';
import { apiServerEnv, podServiceEnv, serviceEnv, ServicesNotSyncedError } from '../../src/k8s/node/service-env.js';
import { ClusterServices } from '../../src/services/cluster-services.js';
import { watchClusterServices, type ServiceWatch } from '../../src/services/watch.js';

const log = pino({ level: process.env.TEST_LOG ?? 'silent' });
const tcp = Protocol.PROTOCOL_TCP;

describe('serviceEnv: the kubelet envvars.FromServices', () => {
  it('writes the *_SERVICE_* names and the Docker-link *_PORT_* family, in the kubelet order', () => {
    expect(serviceEnv({ name: 'kubernetes', clusterIps: ['10.96.0.1'], ports: [{ name: 'https', protocol: tcp, port: 443, nodePort: 0 }] })).toEqual([
      { name: 'KUBERNETES_SERVICE_HOST', value: '10.96.0.1' },
      { name: 'KUBERNETES_SERVICE_PORT', value: '443' },
      { name: 'KUBERNETES_SERVICE_PORT_HTTPS', value: '443' },
      { name: 'KUBERNETES_PORT', value: 'tcp://10.96.0.1:443' },
      { name: 'KUBERNETES_PORT_443_TCP', value: 'tcp://10.96.0.1:443' },
      { name: 'KUBERNETES_PORT_443_TCP_PROTO', value: 'tcp' },
      { name: 'KUBERNETES_PORT_443_TCP_PORT', value: '443' },
      { name: 'KUBERNETES_PORT_443_TCP_ADDR', value: '10.96.0.1' },
    ]);
  });

  it('names dashes as underscores, every port with its protocol, the primary cluster IP; IPv6 bracketed in URLs', () => {
    const env = serviceEnv({
      name: 'my-dns',
      clusterIps: ['fd00::a', '10.0.0.10'],
      ports: [
        { name: 'dns', protocol: Protocol.PROTOCOL_UDP, port: 53, nodePort: 0 },
        { name: 'dns-tcp', protocol: tcp, port: 53, nodePort: 0 },
      ],
    });
    const m = new Map(env.map((e) => [e.name, e.value]));
    expect(m.get('MY_DNS_SERVICE_HOST')).toBe('fd00::a');
    expect(m.get('MY_DNS_SERVICE_PORT_DNS_TCP')).toBe('53');
    expect(m.get('MY_DNS_PORT')).toBe('udp://[fd00::a]:53');
    expect(m.get('MY_DNS_PORT_53_UDP_PROTO')).toBe('udp');
    expect(m.get('MY_DNS_PORT_53_TCP')).toBe('tcp://[fd00::a]:53');
  });

  it('writes nothing for a headless Service or one without ports', () => {
    expect(serviceEnv({ name: 'h', clusterIps: [], ports: [{ name: '', protocol: tcp, port: 80, nodePort: 0 }] })).toEqual([]);
    expect(serviceEnv({ name: 'h', clusterIps: ['10.0.0.5'], ports: [] })).toEqual([]);
  });
});

describe('apiServerEnv: which address pods are given', () => {
  const kubernetes = { namespace: 'default', name: 'kubernetes', clusterIps: ['10.0.0.1'], externalIps: [], ports: [{ name: 'https', protocol: tcp, port: 443, nodePort: 0 }] };
  const view = (synced: boolean, svc?: typeof kubernetes) => ({
    isSynced: () => synced,
    service: (k: string) => (k === 'default/kubernetes' ? (svc as never) : undefined),
    inNamespace: () => [],
  });
  const host = (env: { name: string; value: string }[]) => env.find((e) => e.name === 'KUBERNETES_SERVICE_HOST')?.value;
  const fallback = { host: '127.0.0.1', port: 6443 };

  it('the Service when the cluster has it; the configured address over it; the kubeconfig server only without it', () => {
    expect(host(apiServerEnv({ services: view(true, kubernetes), fallback }))).toBe('10.0.0.1');
    expect(host(apiServerEnv({ configured: { host: 'api.example', port: 8443 }, services: view(true, kubernetes), fallback }))).toBe('api.example');
    expect(apiServerEnv({ services: view(true), fallback })).toContainEqual({ name: 'KUBERNETES_PORT_6443_TCP_ADDR', value: '127.0.0.1' });
    expect(host(apiServerEnv({ fallback }))).toBe('127.0.0.1');
    expect(apiServerEnv({})).toEqual([]);
  });

  it('refuses, as the kubelet does, until Services have been listed once', () => {
    expect(() => apiServerEnv({ services: view(false, kubernetes), fallback })).toThrow(ServicesNotSyncedError);
  });
});

describe('podServiceEnv: the kubelet getServiceEnvVarMap', () => {
  const svc = (namespace: string, name: string, ip: string) =>
    ClusterService.fromPartial({ namespace, name, clusterIps: [ip], ports: [{ name: '', protocol: tcp, port: 80, nodePort: 0 }] });
  const all = [
    svc('default', 'kubernetes', '10.0.0.1'),
    svc('default', 'web', '10.0.0.2'),
    svc('team', 'kubernetes', '10.0.0.3'),
    svc('team', 'b-svc', '10.0.0.4'),
    svc('team', 'a-svc', '10.0.0.5'),
  ];
  const view = {
    isSynced: () => true,
    service: (k: string) => all.find((x) => `${x.namespace}/${x.name}` === k) as never,
    inNamespace: (ns: string) => all.filter((x) => x.namespace === ns),
  };
  const get = (env: { name: string; value: string }[], name: string) => env.find((e) => e.name === name)?.value;

  it("a namespace Service named kubernetes wins over the master one; Services in name order; other namespaces' never", () => {
    const env = podServiceEnv({ services: view, namespace: 'team' });
    expect(get(env, 'KUBERNETES_SERVICE_HOST')).toBe('10.0.0.3');
    expect(env.filter((e) => e.name.endsWith('_SERVICE_HOST')).map((e) => e.name)).toEqual(['KUBERNETES_SERVICE_HOST', 'A_SVC_SERVICE_HOST', 'B_SVC_SERVICE_HOST']);
    expect(get(env, 'WEB_SERVICE_HOST')).toBeUndefined();
    // Without service links only the master Service is given.
    expect(podServiceEnv({ services: view, namespace: 'team', enableServiceLinks: false }).filter((e) => e.name.endsWith('_SERVICE_HOST'))).toEqual([
      { name: 'KUBERNETES_SERVICE_HOST', value: '10.0.0.1' },
    ]);
  });

  it('in the default namespace a configured API server address is not overridden by the kubernetes Service', () => {
    const env = podServiceEnv({ services: view, namespace: 'default', configured: { host: 'api.example', port: 8443 } });
    expect(get(env, 'KUBERNETES_SERVICE_HOST')).toBe('api.example');
    expect(get(env, 'WEB_SERVICE_HOST')).toBe('10.0.0.2');
  });
});

describe('a pod manifest against a real kube-apiserver', () => {
  let kube: KubeApiserver;
  let rest: KubeRest;
  let services: ClusterServices;
  let watch: ServiceWatch | undefined;

  beforeAll(async () => {
    kube = await startKubeApiserver();
    rest = new KubeRest(loadKubeConfig(kube.kubeconfig));
    services = new ClusterServices();
  }, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries

  afterAll(async () => {
    await watch?.stop();
    await kube?.stop();
  });

  const pod: KPod = {
    metadata: { name: 'env', namespace: 'team-a', uid: 'u-env' },
    spec: {
      containers: [{ name: 'main', image: 'busybox', env: [{ name: 'KUBERNETES_SERVICE_PORT', value: 'mine' }] }],
      initContainers: [{ name: 'init', image: 'busybox' }],
    },
  };
  const containerEnv = (manifest: string, i: number) => {
    const spec = (
      parseAllDocuments(manifest)[0]!.toJS() as { spec: { containers: { env: { name: string; value: string }[] }[]; initContainers: { env: { name: string; value: string }[] }[] } }
    ).spec;
    return new Map([...spec.containers, ...spec.initContainers][i]!.env.map((e) => [e.name, e.value]));
  };

  it('every container, init containers too, gets the kubernetes Service once the table is listed; its own variables win', async () => {
    const server = new URL(kube.server);
    const o = { nodeName: 'n', services, fallbackApiServer: { host: server.hostname, port: Number(server.port) } };
    await expect(buildPodManifest(rest, pod, o)).rejects.toThrow(ServicesNotSyncedError);

    watch = watchClusterServices(rest, services, log);
    await waitFor('the Services to be listed', () => services.isSynced() && !!services.service('default/kubernetes'), { timeoutMs: 20_000, intervalMs: 50 });
    const ip = (await kube.kubectl(['get', 'service', 'kubernetes', '-n', 'default', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim();
    expect(ip).toMatch(/^10\.0\.0\.\d+$/);
    expect(ip).not.toBe(server.hostname);

    const built = await buildPodManifest(rest, pod, o);
    const main = containerEnv(built.manifest, 0);
    expect(main.get('KUBERNETES_SERVICE_HOST')).toBe(ip);
    expect(main.get('KUBERNETES_SERVICE_PORT')).toBe('mine');
    expect(main.get('KUBERNETES_SERVICE_PORT_HTTPS')).toBe('443');
    expect(main.get('KUBERNETES_PORT_443_TCP')).toBe(`tcp://${ip}:443`);
    expect(containerEnv(built.manifest, 1).get('KUBERNETES_PORT')).toBe(`tcp://${ip}:443`);

    // The env a pod got stays for its life (a container's env is fixed once made), even if the
    // Service vanished: rebuilt with it, the manifest is identical, so nothing restarts.
    services.setService('default/kubernetes', undefined);
    const again = await buildPodManifest(rest, pod, o, { serviceEnv: built.serviceEnv });
    expect(again.manifest).toBe(built.manifest);
    // A new pod in a cluster without the Service gets the kubeconfig's server.
    const fresh = await buildPodManifest(rest, pod, o);
    expect(containerEnv(fresh.manifest, 1).get('KUBERNETES_SERVICE_HOST')).toBe(server.hostname);
    expect(containerEnv(fresh.manifest, 1).get('KUBERNETES_SERVICE_PORT')).toBe(server.port);
  });

  it("service links: every Service of the pod's namespace, as the kubelet writes them; none with enableServiceLinks: false", async () => {
    await waitFor('the Services to be listed', () => services.isSynced(), { timeoutMs: 20_000, intervalMs: 50 });
    const objects = `
apiVersion: v1
kind: Namespace
metadata: { name: links }
---
apiVersion: v1
kind: Namespace
metadata: { name: elsewhere }
---
apiVersion: v1
kind: Service
metadata: { name: fooservice-test, namespace: links }
spec:
  selector: { app: x }
  ports: [{ name: http, port: 8765, targetPort: 8080 }, { name: dns, port: 53, protocol: UDP }]
---
apiVersion: v1
kind: Service
metadata: { name: headless, namespace: links }
spec: { clusterIP: None, selector: { app: x }, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: ext, namespace: links }
spec: { type: ExternalName, externalName: example.com }
---
apiVersion: v1
kind: Service
metadata: { name: other, namespace: elsewhere }
spec: { selector: { app: x }, ports: [{ port: 81 }] }
`;
    const applied = await kube.kubectl(['apply', '-f', '-'], { input: objects });
    expect(applied.code, applied.stderr).toBe(0);
    await waitFor('the Services to reach the table', () => !!services.service('links/fooservice-test') && !!services.service('elsewhere/other'), {
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    const ip = services.service('links/fooservice-test')!.clusterIps[0]!;
    // The test above took default/kubernetes out of the table: the master Service is the kubeconfig's server.
    const server = new URL(kube.server);
    const o = { nodeName: 'n', services, fallbackApiServer: { host: server.hostname, port: Number(server.port) } };
    const inLinks = (spec: Partial<KPod['spec']>): KPod => ({
      metadata: { name: 'p', namespace: 'links', uid: 'u-p' },
      spec: { containers: [{ name: 'main', image: 'busybox' }], ...spec },
    });

    const env = containerEnv((await buildPodManifest(rest, inLinks({ initContainers: [{ name: 'init', image: 'busybox' }] }), o)).manifest, 0);
    expect(env.get('FOOSERVICE_TEST_SERVICE_HOST')).toBe(ip);
    expect(env.get('FOOSERVICE_TEST_SERVICE_PORT')).toBe('8765');
    expect(env.get('FOOSERVICE_TEST_SERVICE_PORT_HTTP')).toBe('8765');
    expect(env.get('FOOSERVICE_TEST_SERVICE_PORT_DNS')).toBe('53');
    expect(env.get('FOOSERVICE_TEST_PORT')).toBe(`tcp://${ip}:8765`);
    expect(env.get('FOOSERVICE_TEST_PORT_8765_TCP')).toBe(`tcp://${ip}:8765`);
    expect(env.get('FOOSERVICE_TEST_PORT_8765_TCP_PROTO')).toBe('tcp');
    expect(env.get('FOOSERVICE_TEST_PORT_8765_TCP_PORT')).toBe('8765');
    expect(env.get('FOOSERVICE_TEST_PORT_8765_TCP_ADDR')).toBe(ip);
    expect(env.get('FOOSERVICE_TEST_PORT_53_UDP')).toBe(`udp://${ip}:53`);
    // Headless and ExternalName Services have no address to link; other namespaces' are not linked.
    expect([...env.keys()].filter((k) => /^(HEADLESS|EXT|OTHER)_/.test(k))).toEqual([]);
    expect(env.get('KUBERNETES_SERVICE_HOST')).toBe(server.hostname);

    const off = containerEnv((await buildPodManifest(rest, inLinks({ enableServiceLinks: false, initContainers: [{ name: 'init', image: 'busybox' }] }), o)).manifest, 0);
    expect([...off.keys()].filter((k) => k.startsWith('FOOSERVICE_TEST_'))).toEqual([]);
    // The master Service is given even without service links, as the kubelet does.
    expect(off.get('KUBERNETES_SERVICE_HOST')).toBe(server.hostname);
  });
});
