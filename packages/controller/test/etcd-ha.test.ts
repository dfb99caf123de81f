// Two controllers on one real etcd: only the leader acts (one cell per pod, one warm pool),
// either serves the API, and when the leader is killed -9 mid-dispatch the other takes over
// with no lost pod and no leaked cell.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { CellState } from '@cello/proto/controller';
import { startEtcd, waitFor, type EtcdServer } from '@cello/testkit';
import { Cluster, startFixtureRegistry, type Registry } from './helpers/cluster.js';

const POD = (name: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    command: ["sh", "-c", "echo up; while true; do sleep 1; done"]
`;

const running = (p: { status?: { phase: PodPhase } }) => p.status?.phase === PodPhase.POD_PHASE_RUNNING;

describe('two controllers on etcd', () => {
  let registry: Registry;
  let etcd: EtcdServer;
  let a: Cluster;
  let b: Cluster;
  beforeAll(async () => {
    registry = await startFixtureRegistry();
    etcd = await startEtcd();
    const store = { kind: 'etcd' as const, endpoints: [etcd.endpoint], prefix: '/cello-ha-test/' };
    a = new Cluster({ registry, store, warm: 1, healthSeconds: 5, gcIntervalSeconds: 3 });
    b = new Cluster({ registry, store, warm: 1, healthSeconds: 5, gcIntervalSeconds: 3, peer: a });
    await a.start();
    await b.start();
  }, 120_000);
  afterAll(async () => {
    await b?.stopController();
    await a?.stop();
    await b?.stop();
    await etcd?.stop();
    await registry?.server.stop();
  }, 90_000);

  it('only the leader acts; after kill -9 of the leader the other takes over', async () => {
    await waitFor('one leader', async () => (await a.isLeader()) !== (await b.isLeader()), { timeoutMs: 30_000 });
    const [leader, follower] = (await a.isLeader()) ? [a, b] : [b, a];
    // Applied through the follower: every replica serves the API.
    expect((await follower.cellctl(['apply', '-f', follower.manifest('ha1', POD('ha1'))])).code).toBe(0);
    await follower.waitPod('ha1', 'running', running, 90_000);
    // One warm pool and one cell per pod: the follower launched nothing.
    await waitFor('pool settled', async () => (await a.cells()).filter((c) => c.state === CellState.CELL_STATE_READY && !c.pod?.name).length === 1, { timeoutMs: 60_000 });
    const live = (await a.cells()).filter((c) => c.state !== CellState.CELL_STATE_TERMINATED);
    expect(live.filter((c) => c.pod?.name === 'ha1')).toHaveLength(1);
    expect(live).toHaveLength(2);
    expect((await a.provider.listOwned(a.controllerId)).length).toBe(2);

    // kill -9 the leader right after a new pod is accepted, before it can run.
    expect((await leader.cellctl(['apply', '-f', leader.manifest('ha2', POD('ha2'))])).code).toBe(0);
    await leader.kill9();
    await waitFor('the follower leads', () => follower.isLeader(), { timeoutMs: 40_000, intervalMs: 250 });
    await follower.waitPod('ha2', 'running under the new leader', running, 90_000);
    const p1 = await follower.pod('ha1');
    expect(running(p1)).toBe(true);

    await follower.cellctl(['delete', 'pod', 'ha1', 'ha2', '--grace', '1'], { timeoutMs: 90_000 });
    await waitFor(
      'no leaked cell',
      async () => {
        const owned = await follower.provider.listOwned(follower.controllerId);
        const cells = (await follower.cells()).filter((c) => c.state !== CellState.CELL_STATE_TERMINATED);
        return owned.length === cells.length && cells.every((c) => !c.pod?.name);
      },
      { timeoutMs: 40_000 },
    );
  }, 300_000);
});
