// The agent's pod manager (real runc, images from a real registry) against the UnitDirectory
// contract: the reference the stream tests' double is held to.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll } from 'vitest';
import { RestartPolicy } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { apply, pod, startTestAgent } from '../helpers/agent.js';
import { startTestRegistry, type TestImages } from '../helpers/registry.js';
import { requireTools } from '../helpers/rootfs.js';
import { unitDirectoryContract, type UnitDirectoryUnderTest } from './contract.js';

let reg: TestImages;
let pods = 0;

beforeAll(async () => {
  requireTools();
  reg = await startTestRegistry();
});

afterAll(async () => {
  await reg?.stop();
});

unitDirectoryContract('pod manager', async (): Promise<UnitDirectoryUnderTest> => {
  // Each pod in its own network namespace, as on a cell.
  const netns = `cello-contract-${process.pid}-${++pods}`;
  execFileSync('ip', ['netns', 'add', netns]);
  execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podNetns: `/run/netns/${netns}`, podIP: `10.98.0.${pods + 1}` });
  const d = a.agent.pod;
  return {
    directory: d,
    start: async (specs) => {
      await apply(a.client, {
        pod: pod(`contract-${specs.map((s) => s.name).join('-')}`, {
          // OnFailure: a unit that exits 0 stays stopped (the contract's promise), a killed one restarts.
          restartPolicy: RestartPolicy.RESTART_POLICY_ON_FAILURE,
          terminationGracePeriodSeconds: 1,
          containers: specs.map((s) => ({
            name: s.name,
            image: reg.busybox,
            command: ['sh', '-c', s.script],
            stdin: s.stdin ?? false,
            tty: s.tty ?? false,
            ...(s.memoryLimitBytes !== undefined ? { resources: { limits: { memoryBytes: s.memoryLimitBytes } } } : {}),
          })),
        }),
      });
      await waitFor('units running', () => (specs.every((s) => d.get(s.name)?.running()) ? true : undefined), { timeoutMs: 60_000, intervalMs: 50 });
    },
    restart: async (name) => {
      const u = d.get(name)!;
      const before = u.restartCount();
      const t = u.runc()!;
      execFileSync('runc', ['--root', t.root, 'kill', t.id, 'KILL']);
      await waitFor(`${name} restarted`, () => (u.restartCount() > before && u.running() ? true : undefined), { timeoutMs: 30_000, intervalMs: 20 });
    },
    cleanup: async () => {
      await a.stop();
      execFileSync('ip', ['netns', 'del', netns]);
    },
  };
});
