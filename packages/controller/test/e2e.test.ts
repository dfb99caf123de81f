// End to end through cellctl, on one machine: the controller daemon with the local provider
// (real cell-agent processes, runc, a registry with the busybox fixture).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PodPhase } from '@cello/proto/cell';
import { CellState } from '@cello/proto/controller';
import { waitFor } from '@cello/testkit';
import { Cluster, httpGet, startFixtureRegistry, type Registry } from './helpers/cluster.js';

const WEB = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: { app: web }
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && echo web starting && exec httpd -f -p 8080 -h /www"]
    ports: [{ containerPort: 8080 }]
    readinessProbe:
      httpGet: { path: /, port: 8080 }
      periodSeconds: 1
`;

const LOOP = (name: string, policy: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  restartPolicy: ${policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    command: ["sh", "-c", "echo up; while true; do sleep 1; done"]
`;

const running = (p: { status?: { phase: PodPhase } }) => p.status?.phase === PodPhase.POD_PHASE_RUNNING;

let registry: Registry;
beforeAll(async () => {
  registry = await startFixtureRegistry();
}, 120_000);
afterAll(async () => {
  await registry?.server.stop();
});

describe('cellctl end to end (local provider)', () => {
  let cl: Cluster;
  beforeAll(async () => {
    cl = new Cluster({ registry, warm: 1, healthSeconds: 4, gcIntervalSeconds: 2 });
    await cl.start();
    await waitFor('a warm cell', async () => (await cl.cells()).some((c) => c.state === CellState.CELL_STATE_READY), { timeoutMs: 60_000, intervalMs: 200 });
  }, 90_000);
  afterAll(async () => {
    await cl?.stop();
  }, 60_000);

  it('apply -> running -> logs -> exec -> port-forward -> delete, from the warm pool, which refills', async () => {
    const warm = (await cl.cells()).find((c) => c.state === CellState.CELL_STATE_READY)!;
    // `get pods -w` prints each change as it happens.
    const watch = cl.spawnCellctl(['get', 'pods', '-w']);
    let watched = '';
    watch.stdout!.on('data', (b: Buffer) => (watched += b.toString()));
    const applied = await cl.cellctl(['apply', '-f', cl.manifest('web', WEB)]);
    expect(applied.stderr).toBe('');
    expect(applied.stdout).toBe('pod/web created\n');
    const pod = await cl.waitPod('web', 'ready', (p) => running(p) && p.status!.containerStatuses.every((c) => c.ready), 60_000);
    expect(pod.cellId).toBe(warm.id);
    expect(pod.instanceType).toBe('local.nano');
    expect(pod.status!.conditions.find((c) => c.type === 'PodScheduled')?.status).toBe(1);
    await waitFor('get pods -w shows web ready', () => /web\s+1\/1\s+Running/.test(watched), { timeoutMs: 10_000 });
    expect(watched).toMatch(/^NAME\s+READY\s+STATUS/);
    expect(watched).toMatch(/web\s+0\/1\s+(Pending|ContainerCreating|Running)/);
    watch.kill('SIGTERM');

    // The pool gets back to one Ready cell without a pod.
    await waitFor('warm pool refill', async () => (await cl.cells()).some((c) => c.state === CellState.CELL_STATE_READY && !c.pod?.name && c.id !== warm.id), {
      timeoutMs: 60_000,
      intervalMs: 200,
    });

    // mTLS: the cell has its own certificate; its key is a 0600 file, never on a command line.
    const keyPath = join(cl.cellsRoot, warm.id, 'tls', 'cell.key');
    expect(statSync(keyPath).mode & 0o777).toBe(0o600);
    const cmdline = readFileSync(`/proc/${cl.agentPid(warm.id)}/cmdline`, 'utf8');
    expect(cmdline).toContain('--tls-cert');
    expect(cmdline).not.toContain('--insecure-dev');
    expect(cmdline).not.toContain('PRIVATE KEY');

    const get = await cl.cellctl(['get', 'pods', '-o', 'wide']);
    expect(get.stdout).toMatch(/^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\s+IP\s+CELL\s+INSTANCE-TYPE\n/);
    expect(get.stdout).toMatch(new RegExp(`web\\s+1/1\\s+Running\\s+0\\s+\\S+\\s+\\S+\\s+${warm.id}\\s+local.nano`));

    const describe = await cl.cellctl(['describe', 'pod', 'web']);
    expect(describe.stdout).toContain(`Cell:           ${warm.id}`);
    expect(describe.stdout).toContain('Instance Type:  local.nano');
    expect(describe.stdout).toMatch(/Scheduled\s+\S+\s+controller\s+assigned to cell .* warm pool/);

    const logs = await cl.cellctl(['logs', 'web']);
    expect(logs.code).toBe(0);
    expect(logs.stdout).toContain('web starting');

    const exec = await cl.cellctl(['exec', 'web', '--', 'sh', '-c', 'cat /www/index.html; echo oops >&2; exit 7']);
    expect(exec.stdout).toBe('hello-from-web\n');
    expect(exec.stderr).toBe('oops\n');
    expect(exec.code).toBe(7);

    const pf = cl.spawnCellctl(['port-forward', 'web', ':8080']);
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        pf.stdout!.on('data', (b: Buffer) => {
          out += b.toString();
          const m = /Forwarding from 127\.0\.0\.1:(\d+) -> 8080/.exec(out);
          if (m) resolve(Number(m[1]));
        });
        pf.on('exit', (c) => reject(new Error(`port-forward exited ${c}`)));
      });
      expect(await httpGet(port)).toBe('hello-from-web\n');
      expect(await httpGet(port)).toBe('hello-from-web\n');
    } finally {
      pf.kill('SIGTERM');
    }

    const del = await cl.cellctl(['delete', 'pod', 'web', '--grace', '2'], { timeoutMs: 60_000 });
    expect(del.stdout).toBe('pod "web" deleted\n');
    const gone = await cl.cellctl(['get', 'pods', 'web']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('not found');
    const cell = (await cl.cells()).find((c) => c.id === warm.id);
    expect(cell === undefined || cell.state === CellState.CELL_STATE_TERMINATED).toBe(true);
    expect(cl.cellDirs()).not.toContain(warm.id);
  }, 180_000);

  it('refuses invalid manifests, naming the field', async () => {
    const noImage = cl.manifest('bad1', `apiVersion: v1\nkind: Pod\nmetadata: { name: bad1 }\nspec:\n  containers:\n  - name: main\n`);
    const r1 = await cl.cellctl(['apply', '-f', noImage]);
    expect(r1.code).toBe(1);
    expect(r1.stderr).toContain('spec.containers[0].image');
    const badCpu = cl.manifest(
      'bad2',
      `apiVersion: v1\nkind: Pod\nmetadata: { name: bad2 }\nspec:\n  containers:\n  - name: main\n    image: IMAGE\n    resources: { requests: { cpu: lots } }\n`,
    );
    const r2 = await cl.cellctl(['apply', '-f', badCpu]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toContain('spec.containers[0].resources.requests.cpu');
    const badAnno = cl.manifest(
      'bad3',
      `apiVersion: v1\nkind: Pod\nmetadata: { name: bad3, annotations: { cello.io/instance-type: "x9.*" } }\nspec:\n  containers:\n  - name: main\n    image: IMAGE\n`,
    );
    const r3 = await cl.cellctl(['apply', '-f', badAnno]);
    expect(r3.code).toBe(1);
    expect(r3.stderr).toContain('metadata.annotations["cello.io/instance-type"]');
    const list = await cl.call<{ pods: unknown[] }>('listPods', {});
    expect(list.pods).toHaveLength(0);
  });

  it('replaces a lost cell and restarts its pod per restart policy', async () => {
    await cl.cellctl(['apply', '-f', cl.manifest('always', LOOP('always', 'Always')), '-f', cl.manifest('never', LOOP('never', 'Never'))]);
    const a = await cl.waitPod('always', 'running', running);
    const n = await cl.waitPod('never', 'running', running);
    process.kill(cl.agentPid(a.cellId), 'SIGKILL');
    process.kill(cl.agentPid(n.cellId), 'SIGKILL');
    const a2 = await cl.waitPod('always', 'running on a new cell', (p) => running(p) && p.cellId !== '' && p.cellId !== a.cellId, 90_000);
    expect(a2.status!.containerStatuses[0]!.restartCount).toBeGreaterThanOrEqual(1);
    const n2 = await cl.waitPod('never', 'failed', (p) => p.status?.phase === PodPhase.POD_PHASE_FAILED, 60_000);
    expect(n2.status!.reason).toBe('CellLost');
    const evs = await cl.events('always');
    expect(evs.map((e) => e.reason)).toContain('CellLost');
    expect(evs.map((e) => e.reason)).toContain('Rescheduling');
    // The lost cells are terminated, their dirs (state, mounts, netns) gone.
    await waitFor('lost cells cleaned up', () => !cl.cellDirs().includes(a.cellId) && !cl.cellDirs().includes(n.cellId), { timeoutMs: 30_000 });
    await cl.cellctl(['delete', 'pod', 'always', 'never', '--grace', '1'], { timeoutMs: 60_000 });
  }, 240_000);

  it('survives kill -9 mid-dispatch with no lost pod and no leaked cell, and collects orphans', async () => {
    const names = ['k1', 'k2', 'k3'];
    for (const nm of names) {
      const r = await cl.cellctl(['apply', '-f', cl.manifest(nm, LOOP(nm, 'Always'))]);
      expect(r.code).toBe(0);
    }
    // Kill as soon as the first pod has a cell (launches and dispatches are in flight).
    await cl.waitPod('k1', 'scheduled', (p) => p.cellId !== '', 30_000);
    await cl.kill9();
    // An instance tagged with our controller ID that the store never heard of: the GC's job.
    const orphan = await cl.provider.launch({
      cellId: 'cell-orphan0001',
      instanceType: 'local.nano',
      spot: false,
      tags: { 'cello.io/controller-id': cl.controllerId, 'cello.io/cell-id': 'cell-orphan0001' },
      bootstrap: { caCertPem: '', token: 'x', tokenExpiresAt: new Date().toISOString(), controllerId: cl.controllerId, cellId: 'cell-orphan0001', agentPort: 0 },
    });
    await cl.start();
    for (const nm of names) await cl.waitPod(nm, 'running after restart', running, 90_000);
    await waitFor('orphan collected', async () => !(await cl.provider.describe([orphan.instanceId])).length, { timeoutMs: 30_000 });

    // Every live instance is known to the store, and every pod has exactly one live cell.
    const cells = await cl.cells();
    const live = cells.filter((c) => c.state !== CellState.CELL_STATE_TERMINATED);
    // (A warm-pool cell may be mid-launch: its instance exists before its record has the ID.)
    const owned = await cl.provider.listOwned(cl.controllerId);
    const liveIds = new Set(live.map((c) => c.id));
    expect(owned.filter((i) => !liveIds.has(i.tags['cello.io/cell-id']!)).map((i) => i.instanceId)).toEqual([]);
    for (const c of live) if (c.instanceId) expect(owned.map((i) => i.instanceId)).toContain(c.instanceId);
    for (const nm of names) expect(live.filter((c) => c.pod?.name === nm)).toHaveLength(1);

    const del = await cl.cellctl(['delete', 'pod', ...names, '--grace', '1'], { timeoutMs: 90_000 });
    expect(del.code).toBe(0);
    const settled = async () => {
      const left = await cl.provider.listOwned(cl.controllerId);
      const liveCells = (await cl.cells()).filter((c) => c.state !== CellState.CELL_STATE_TERMINATED);
      return { ok: left.length === liveCells.length && liveCells.every((c) => !c.pod?.name), left, liveCells };
    };
    await waitFor('only warm cells remain', async () => (await settled()).ok, { timeoutMs: 30_000 }).catch(async (err: Error) => {
      const s = await settled();
      throw new Error(
        `${err.message}: instances ${JSON.stringify(s.left.map((i) => [i.instanceId, i.state, i.tags]))} cells ${JSON.stringify(s.liveCells.map((c) => [c.id, c.state, c.instanceId, c.pod?.name, c.reason]))}`,
      );
    });
  }, 240_000);
});
