// A real kubelet (v1.34.4) whose --container-runtime-endpoint is the real cello-cri, registered
// with the harness's real API server and scheduler, its Node tainted: a pod that tolerates the
// taint is scheduled there, runs on a cell of its own (the real controller, local provider: a
// cell-agent process, runc), `kubectl logs` reads its output through the kubelet, and
// `kubectl delete` ends the cell. A pod without the toleration is not scheduled there.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Metadata } from '@grpc/grpc-js';
import {
  kubeletBinary,
  pushBusybox,
  pushPause,
  startKubeApiserver,
  startKubelet,
  startRegistry,
  waitFor,
  type KubeApiserver,
  type Kubelet,
  type RegistryServer,
} from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ListPodSandboxResponse, PodSandboxStatusResponse } from '../src/gen/runtime/v1/api.js';
import { call, clients, deadline, startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

const NODE = 'cello-cri-node';
const TAINT = { key: 'cello.io/cell', value: 'true', effect: 'NoSchedule' as const };

let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let kube: KubeApiserver;
let kubelet: Kubelet;
let busybox: string;
let base: string;
/** The cell the tolerating pod runs on (read from the shim's sandbox status). */
let cellId = '';

const diagnostics = () => `\n--- kubelet:\n${kubelet?.logs().slice(-3000)}\n--- cello-cri:\n${shim?.logs().slice(-3000)}\n--- controller:\n${controller?.logs().slice(-2000)}`;

async function kubectlOk(args: string[], o: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await kube.kubectl(args, o);
  expect(r.code, `kubectl ${args.join(' ')}: ${r.stderr}${diagnostics()}`).toBe(0);
  return r.stdout;
}

const podManifest = (name: string, tolerate: boolean) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'default', labels: { app: name } },
  spec: {
    automountServiceAccountToken: false,
    terminationGracePeriodSeconds: 5,
    ...(tolerate ? { tolerations: [{ ...TAINT, operator: 'Equal' }] } : {}),
    containers: [
      {
        name: 'main',
        image: busybox,
        imagePullPolicy: 'IfNotPresent',
        command: ['sh', '-c', 'echo "hello from $(hostname)"; echo "to stderr" >&2; exec sleep 3600'],
      },
    ],
  },
});

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), 'cello-cri-kubelet-'));
  const rootDir = join(base, 'kubelet');
  mkdirSync(join(rootDir, 'pods'), { recursive: true });
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  controller = await startController({ insecureRegistries: [registry.host] });
  shim = await startShim([
    '--insecure-registry',
    registry.host,
    '--controller-config',
    controller.cellctlConfig,
    '--sandbox-image',
    pause,
    '--kubelet-pods-dir',
    join(rootDir, 'pods'),
  ]);
  kube = await startKubeApiserver();
  kubelet = await startKubelet({ apiserver: kube, runtimeEndpoint: shim.socket, nodeName: NODE, taints: [TAINT], rootDir, readyTimeoutMs: 120_000 });
}, 30 * 60_000);

afterAll(async () => {
  // Pods first, while the kubelet still runs to stop their sandboxes (and so end their cells).
  if (kube && kubelet) await kube.kubectl(['delete', 'pod', '--all', '--wait=true', '--timeout=90s'], { timeoutMs: 100_000 }).catch(() => undefined);
  await kubelet?.stop();
  await kube?.stop();
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
  if (base) rmSync(base, { recursive: true, force: true });
}, 300_000);

describe('a real kubelet drives cello-cri', () => {
  it("the node's kubelet drop-in (deploy/kubelet.service.d) is flags this kubelet has, for the unit's socket and this taint", () => {
    const deploy = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'deploy');
    const dropIn = readFileSync(join(deploy, 'kubelet.service.d', '10-cello-cri.conf'), 'utf8');
    const args = /^Environment="KUBELET_EXTRA_ARGS=(.*)"$/m.exec(dropIn)![1]!.split(' ');
    const socket = /--listen (\S+)/.exec(readFileSync(join(deploy, 'cello-cri.service'), 'utf8'))![1]!;
    expect(args).toEqual([
      `--container-runtime-endpoint=unix://${socket}`,
      `--image-service-endpoint=unix://${socket}`,
      '--cgroup-driver=cgroupfs',
      `--register-with-taints=${TAINT.key}=${TAINT.value}:${TAINT.effect}`,
    ]);
    const help = spawnSync(kubeletBinary(), ['--help'], { encoding: 'utf8', timeout: 30_000 }).stdout;
    for (const a of args) expect(help, a).toMatch(new RegExp(`^\\s+${a.slice(0, a.indexOf('='))} `, 'm'));
  });

  it('registers its Node with the taint, the runtime named cello-cri', async () => {
    const node = JSON.parse(await kubectlOk(['get', 'node', NODE, '-o', 'json'])) as {
      spec: { taints?: { key: string; value: string; effect: string }[] };
      status: { nodeInfo: { containerRuntimeVersion: string; kubeletVersion: string } };
    };
    expect(node.spec.taints).toContainEqual({ key: TAINT.key, value: TAINT.value, effect: TAINT.effect });
    expect(node.status.nodeInfo.containerRuntimeVersion).toMatch(/^cello-cri:\/\//);
    expect(node.status.nodeInfo.kubeletVersion).toBe('v1.34.4');
  });

  it('a pod without the toleration is not scheduled on the tainted node', async () => {
    await kubectlOk(['apply', '-f', '-'], { input: JSON.stringify(podManifest('untolerated', false)) });
    await waitFor(
      'the scheduler to report the pod unschedulable',
      async () => {
        const r = await kube.kubectl(['get', 'pod', 'untolerated', '-o', 'jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}']);
        return r.stdout === 'Unschedulable';
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect((await kubectlOk(['get', 'pod', 'untolerated', '-o', 'jsonpath={.spec.nodeName}'])).trim()).toBe('');
    await kubectlOk(['delete', 'pod', 'untolerated', '--wait=true']);
  });

  it('a tolerating pod is scheduled, runs on a cell, and kubectl logs shows its output', async () => {
    const t0 = Date.now();
    await kubectlOk(['apply', '-f', '-'], { input: JSON.stringify(podManifest('web', true)) });
    await waitFor('the pod to be Running', async () => (await kube.kubectl(['get', 'pod', 'web', '-o', 'jsonpath={.status.phase}'])).stdout === 'Running', {
      timeoutMs: 180_000,
      intervalMs: 500,
    }).catch((err: Error) => {
      throw new Error(`${err.message}${diagnostics()}`);
    });
    console.log(`kubelet + cello-cri: pod created -> Running in ${Date.now() - t0} ms (cold cell)`);
    const pod = JSON.parse(await kubectlOk(['get', 'pod', 'web', '-o', 'json'])) as {
      metadata: { uid: string };
      spec: { nodeName: string };
      status: { podIP: string; containerStatuses: { ready: boolean; containerID: string }[] };
    };
    expect(pod.spec.nodeName).toBe(NODE);
    expect(pod.status.containerStatuses[0]!.containerID).toMatch(/^cello-cri:\/\/[a-f0-9]{64}$/);
    // The pod IP is its cell's address, not the node's.
    expect(pod.status.podIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(pod.status.podIP).not.toBe('127.0.0.1');

    // Its sandbox is a cell of the controller.
    const c = clients(shim.socket);
    try {
      const list = await call<ListPodSandboxResponse>((cb) =>
        c.runtime.listPodSandbox(
          { filter: { id: '', state: undefined, labelSelector: { 'io.kubernetes.pod.uid': pod.metadata.uid } } },
          new Metadata(),
          { deadline: deadline() },
          cb,
        ),
      );
      expect(list.err).toBeUndefined();
      const ready = list.res!.items.filter((s) => s.state === 0);
      expect(ready).toHaveLength(1);
      const status = await call<PodSandboxStatusResponse>((cb) =>
        c.runtime.podSandboxStatus({ podSandboxId: ready[0]!.id, verbose: true }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(status.err).toBeUndefined();
      cellId = (JSON.parse(status.res!.info['info']!) as { cellId: string }).cellId;
      expect(status.res!.status!.network!.ip).toBe(pod.status.podIP);
    } finally {
      c.close();
    }
    expect(cellId).not.toBe('');
    expect(controller.cellDirs()).toContain(cellId);

    // kubectl logs: API server -> the kubelet's API -> the CRI log file cello-cri writes.
    let out = '';
    await waitFor(
      'kubectl logs to show the output',
      async () => {
        const r = await kube.kubectl(['logs', 'web']);
        out = r.stdout;
        return r.code === 0 && out.includes('to stderr');
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last output: ${out}${diagnostics()}`);
    });
    expect(out).toMatch(/^hello from web\n/m);
    expect(out).toContain('to stderr\n');
  }, 300_000);

  // `kubectl exec` goes API server -> kubelet -> the CRI's Exec URL, a streaming server in the shim.
  it('kubectl exec runs in the cell through the shim streaming server', async () => {
    const r = await kube.kubectl(['exec', 'web', '--', 'sh', '-c', 'echo "in $(hostname)"; echo oops >&2; exit 3'], { timeoutMs: 60_000 });
    expect(r.stdout, `kubectl exec: ${r.stderr}`).toBe('in web\n');
    expect(r.stderr).toContain('oops');
    expect(r.code).toBe(3);
    const ok = await kube.kubectl(['exec', '-i', 'web', '--', 'cat'], { timeoutMs: 60_000, input: 'from stdin\n' });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('from stdin\n');
  }, 120_000);

  it('kubectl delete ends the cell', async () => {
    expect(cellId, "the previous test found the pod's cell").not.toBe('');
    await kubectlOk(['delete', 'pod', 'web', '--wait=true', '--timeout=120s'], { timeoutMs: 130_000 });
    await waitFor('the cell to be gone from the controller', () => !controller.cellDirs().includes(cellId), { timeoutMs: 60_000, intervalMs: 250 }).catch((err: Error) => {
      throw new Error(`${err.message}${diagnostics()}`);
    });
    // The kubelet stopped and removed the sandbox: the shim lists none for the pod.
    const c = clients(shim.socket);
    try {
      await waitFor(
        'the sandbox to be removed',
        async () => {
          const list = await call<ListPodSandboxResponse>((cb) =>
            c.runtime.listPodSandbox({ filter: { id: '', state: undefined, labelSelector: { app: 'web' } } }, new Metadata(), { deadline: deadline() }, cb),
          );
          return list.res && list.res.items.every((s) => s.state !== 0);
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
    } finally {
      c.close();
    }
  }, 240_000);
});
