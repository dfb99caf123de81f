// End to end through the gRPC API with real runc: init units, shared volumes, restarts,
// probes, stop, user resolution, spec changes.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase, RestartPolicy } from '@cello/proto/cell';
import { DirImageService } from '../src/images/dir-images.js';
import { apply, getStatus, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { makeBusyboxRootfs, requireTools } from './helpers/rootfs.js';

const IMG = 'local/busybox:1';
let images: DirImageService;
const agents: TestAgent[] = [];

beforeAll(() => {
  requireTools();
  images = new DirImageService();
  images.add(IMG, makeBusyboxRootfs(join(mkdtempSync(join(tmpdir(), 'cello-rootfs-')), 'rootfs')), { cmd: ['sh'] });
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
});

async function agent(): Promise<TestAgent> {
  const a = await startTestAgent(images);
  agents.push(a);
  return a;
}

describe('pods', () => {
  it('runs init units in order, then two units sharing an emptyDir', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('init-share', {
        volumes: [{ name: 'shared', source: { $case: 'emptyDir', value: {} } }],
        initContainers: [
          { name: 'first', image: IMG, command: ['sh', '-c', 'echo one > /data/order'], volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
          { name: 'second', image: IMG, command: ['sh', '-c', 'echo two >> /data/order'], volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
        ],
        containers: [
          { name: 'writer', image: IMG, command: ['sh', '-c', 'echo from-writer > /data/msg; sleep 3600'], volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
          { name: 'reader', image: IMG, command: ['sh', '-c', 'while [ ! -f /data/msg ]; do sleep 0.1; done; cat /data/order /data/msg > /dev/termination-log; sleep 3600'], volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
        ],
      }),
    });
    await a.watch.until('both units running', (w) => w.running('writer') && w.running('reader') && w.last?.status?.phase === PodPhase.POD_PHASE_RUNNING);
    const s = a.watch.last!.status!;
    expect(s.initContainerStatuses.map((c) => c.state?.state?.$case)).toEqual(['terminated', 'terminated']);
    expect(s.conditions.find((c) => c.type === 'Initialized')?.status).toBe(1);
    const order = readFileSync(join(a.stateDir, 'volumes/shared/order'), 'utf8');
    expect(order).toBe('one\ntwo\n');
    await a.watch.until('ready', (w) => w.last?.status?.conditions.find((c) => c.type === 'Ready')?.status === 1);
  });

  it('backs off a crashing unit and counts its restarts', async () => {
    const a = await agent();
    await apply(a.client, { pod: pod('crash', { containers: [{ name: 'crasher', image: IMG, command: ['sh', '-c', 'echo bye; exit 3'] }] }) });
    await a.watch.until('CrashLoopBackOff after restarts', (w) => (w.unit('crasher')?.restartCount ?? 0) >= 2 && w.waiting('crasher')?.reason === 'CrashLoopBackOff');
    const u = a.watch.unit('crasher')!;
    expect(u.lastState?.state?.$case).toBe('terminated');
    const last = u.lastState?.state?.$case === 'terminated' ? u.lastState.state.value : undefined;
    expect(last?.exitCode).toBe(3);
    expect(last?.reason).toBe('Error');
    expect(a.watch.events.some((e) => e.reason === 'BackOff' && e.container === 'crasher')).toBe(true);
  });
});
