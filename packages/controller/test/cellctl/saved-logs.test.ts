// Logs that outlive the cell: a finished Job pod's logs are kept by the controller when it ends
// (bounded by pods.keepLogBytes), `cellctl logs` still answers once its cell is gone, and says so
// honestly once they are pruned (pods.keepLogsSeconds). A real controller with the local provider
// (a real agent and runc).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { CellState } from '@cello/proto/controller';
import { waitFor } from '@cello/testkit';
import { Cluster, startFixtureRegistry, type Registry } from '../helpers/cluster.js';

const JOB = `apiVersion: v1
kind: Pod
metadata: { name: job }
spec:
  restartPolicy: Never
  containers:
  - name: work
    image: IMAGE
    command: ["sh", "-c", "i=1; while [ $i -le 1000 ]; do echo line $i; i=$((i+1)); done; echo done >&2"]
`;

const KEEP = 4096;

let registry: Registry;
let cl: Cluster;
beforeAll(async () => {
  registry = await startFixtureRegistry();
  cl = new Cluster({ registry, retainFinishedSeconds: 1, gcIntervalSeconds: 1, keepLogBytes: KEEP, keepLogsSeconds: 12 });
  await cl.start();
}, 120_000);
afterAll(async () => {
  await cl?.stop();
  await registry?.server.stop();
}, 60_000);

describe('logs of a finished pod after its cell is gone', () => {
  it('are kept (the last keepLogBytes), read with tail and timestamps, then pruned with an honest message', async () => {
    expect((await cl.cellctl(['apply', '-f', cl.manifest('job', JOB)])).stdout).toBe('pod/job created\n');
    const done = await cl.waitPod('job', 'succeeded', (p) => p.status?.phase === PodPhase.POD_PHASE_SUCCEEDED, 90_000);
    const cellId = done.cellId;
    // The cell is released a second after the pod ended, and its instance ends.
    await waitFor(
      'the job cell gone',
      async () => {
        const c = (await cl.cells()).find((x) => x.id === cellId);
        return (!c || c.state === CellState.CELL_STATE_TERMINATED) && !cl.cellDirs().includes(cellId);
      },
      { timeoutMs: 60_000, intervalMs: 200 },
    );

    const logs = await cl.cellctl(['logs', 'job']);
    expect(logs.stderr).toBe('done\n');
    expect(logs.code).toBe(0);
    expect(logs.stdout.slice(-19)).toBe('line 999\nline 1000\n');
    // Bounded: the end of the log, whole lines, at most KEEP bytes (with the stderr line).
    expect(logs.stdout.length + logs.stderr.length).toBeLessThanOrEqual(KEEP);
    expect(logs.stdout.length).toBeGreaterThan(KEEP - 20);
    expect(logs.stdout).not.toContain('line 1\n');
    expect(logs.stdout.slice(0, 5)).toBe('line ');

    expect((await cl.cellctl(['logs', 'job', '--tail', '2'])).stdout).toBe('line 1000\n');
    const stamped = await cl.cellctl(['logs', 'job', '--tail', '1', '--timestamps']);
    expect(stamped.stderr).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z done\n$/);
    expect((await cl.cellctl(['logs', 'job', '--limit-bytes', '20'])).stdout).toBe('line 1000\n');
    const previous = await cl.cellctl(['logs', 'job', '--previous']);
    expect(previous.code).toBe(1);
    expect(previous.stderr).toMatch(/previous/);

    // Pruned after keepLogsSeconds: said so, with when.
    const pruned = await waitFor(
      'the kept logs pruned',
      async () => {
        const r = await cl.cellctl(['logs', 'job']);
        return r.code !== 0 ? r : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 1000 },
    );
    expect(pruned.stderr).toMatch(/pod default\/job: its cell is gone, and the logs kept when it ended \(\S+\) were pruned at \S+ \(pods\.keepLogsSeconds\)/);

    // Deleting the pod deletes what was kept.
    await cl.cellctl(['delete', 'pod', 'job']);
    const gone = await cl.cellctl(['logs', 'job']);
    expect(gone.stderr).toMatch(/not found/);
  }, 180_000);
});
