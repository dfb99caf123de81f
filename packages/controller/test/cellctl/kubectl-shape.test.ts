// cellctl's machine-readable output is kubectl's: v1 Pods and PodLists, -o name, -o jsonpath, and
// `get -o yaml | apply -f -` gives back the same pod. `exec` of a command that cannot start exits
// 127 / 126 as kubectl does. A real controller with the local provider (real agents, runc).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { PodPhase } from '@cello/proto/cell';
import { Cluster, startFixtureRegistry, type Registry } from '../helpers/cluster.js';

const WEB = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: { app: web }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: IMAGE
    command: ["sh", "-c", "echo up; exec sleep 100000"]
    ports: [{ containerPort: 8080 }]
    resources: { requests: { cpu: 50m, memory: 16Mi } }
`;

interface KubePod {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; uid: string; generation: number; resourceVersion: string; labels: Record<string, string> };
  spec: { restartPolicy: string; containers: { ports: { containerPort: number; protocol: string }[]; resources: unknown }[] };
  status: { phase: string; containerStatuses: { name: string; ready: boolean; state: { running?: unknown } }[] };
}

let registry: Registry;
let cl: Cluster;
beforeAll(async () => {
  registry = await startFixtureRegistry();
  cl = new Cluster({ registry });
  await cl.start();
  const applied = await cl.cellctl(['apply', '-f', cl.manifest('web', WEB)]);
  expect(applied.stdout).toBe('pod/web created\n');
  await cl.waitPod('web', 'running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
}, 180_000);
afterAll(async () => {
  await cl?.stop();
  await registry?.server.stop();
}, 60_000);

describe('cellctl get: kubectl-shaped output', () => {
  it('-o yaml of one pod is a v1 Pod that jq-style paths read', async () => {
    const r = await cl.cellctl(['get', 'pod', 'web', '-o', 'yaml']);
    expect(r.code).toBe(0);
    const pod = parse(r.stdout) as KubePod;
    expect(pod.apiVersion).toBe('v1');
    expect(pod.kind).toBe('Pod');
    expect(pod.metadata).toMatchObject({ name: 'web', namespace: 'default', labels: { app: 'web' }, generation: 1 });
    expect(pod.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(pod.spec.restartPolicy).toBe('Always');
    expect(pod.spec.containers[0]!.ports).toEqual([{ containerPort: 8080, protocol: 'TCP' }]);
    expect(pod.spec.containers[0]!.resources).toEqual({ requests: { cpu: '50m', memory: '16Mi' } });
    expect(pod.status.phase).toBe('Running');
    expect(pod.status.containerStatuses[0]).toMatchObject({ name: 'app', state: { running: {} } });
    expect(r.stdout).not.toMatch(/PROTOCOL_|RESTART_POLICY_|POD_PHASE_|cpuMillis|handler:/);
  });

  it('-o json of a list is a PodList with items, even of one pod', async () => {
    const r = await cl.cellctl(['get', 'pods', '-o', 'json']);
    const list = JSON.parse(r.stdout) as { apiVersion: string; kind: string; items: KubePod[] };
    expect(list).toMatchObject({ apiVersion: 'v1', kind: 'PodList' });
    expect(list.items.map((p) => [p.kind, p.metadata.name, p.status.phase])).toEqual([['Pod', 'web', 'Running']]);
  });

  it('-o name and -o jsonpath as kubectl', async () => {
    expect((await cl.cellctl(['get', 'pods', '-o', 'name'])).stdout).toBe('pod/web\n');
    expect((await cl.cellctl(['get', 'pod', 'web', '-o', 'jsonpath={.status.phase}'])).stdout).toBe('Running');
    const range = await cl.cellctl(['get', 'pods', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready}{"\\n"}{end}']);
    expect(range.stdout).toBe('web true\n');
    const bad = await cl.cellctl(['get', 'pods', '-o', 'jsonpath={.items']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unclosed action/);
  });

  it('get -o yaml | apply -f - round-trips: the same pod, unchanged', async () => {
    const before = await cl.pod('web');
    const yaml = (await cl.cellctl(['get', 'pod', 'web', '-o', 'yaml'])).stdout;
    const applied = await cl.cellctl(['apply', '-f', '-'], { input: yaml });
    expect(applied.stderr).toBe('');
    expect(applied.stdout).toBe('pod/web unchanged\n');
    const after = await cl.pod('web');
    expect(after.metadata?.generation).toBe(before.metadata?.generation);
    // A list round-trips too.
    const list = (await cl.cellctl(['get', 'pods', '-o', 'yaml'])).stdout;
    expect((await cl.cellctl(['apply', '-f', '-'], { input: list })).stdout).toBe('pod/web unchanged\n');
  });
});

describe('cellctl exec: the exit code of a command that cannot start', () => {
  it('127 for a command that does not exist, 126 for one that cannot be executed, with the reason', async () => {
    const missing = await cl.cellctl(['exec', 'web', '--', 'no-such-command']);
    expect(missing.code).toBe(127);
    expect(missing.stderr).toMatch(/no-such-command.*not found/);
    const notExecutable = await cl.cellctl(['exec', 'web', '--', '/proc']);
    expect(notExecutable.code).toBe(126);
    expect(notExecutable.stderr).toMatch(/permission denied/);
    const ok = await cl.cellctl(['exec', 'web', '--', 'sh', '-c', 'exit 3']);
    expect(ok.code).toBe(3);
  });
});

describe('apply of a PodList (get -o yaml | apply -f -)', () => {
  it('re-serializes each item in the YAML 1.1 the core parses: a label "yes" stays a string', async () => {
    const { splitManifests } = await import('../../src/cellctl/commands.js');
    const { podFromManifest } = await import('@cello/proto');
    const list = `apiVersion: v1\nkind: PodList\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: web, labels: {touched: "yes"}}\n  spec: {containers: [{name: c, image: busybox}]}\n`;
    const [one] = splitManifests(list);
    expect(podFromManifest(one!, { namespace: 'default' }).pod.metadata!.labels).toEqual({ touched: 'yes' });
  });
});
