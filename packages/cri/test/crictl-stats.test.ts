// Stats and resources through crictl (v1.34.0) against the real cello-cri CLI, a real controller
// with the local provider (real cell-agent, real runc, real cgroups) and a real registry: the
// figures are the cell's unit statistics (the controller's TopPods), a container that burns CPU
// shows its CPU time, created containers are listed without usage, and a resources change the
// cell cannot make in place is refused, never ignored.
import { criTools, pushBusybox, pushPause, startRegistry, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crictlFor, startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let busybox: string;

const {
  run: crictl,
  ok,
  file,
} = crictlFor(
  () => tools.crictl,
  () => shim,
);

const podConfig = { metadata: { name: 'stats', namespace: 'default', uid: 'uid-stats', attempt: 0 }, hostname: 'stats', labels: { app: 'stats' }, linux: {} };

interface Value {
  value: string;
}
interface Stats {
  attributes: { id: string; metadata: { name: string } };
  cpu?: { timestamp: string; usageCoreNanoSeconds?: Value; usageNanoCores?: Value };
  memory?: { timestamp: string; workingSetBytes?: Value; usageBytes?: Value };
}

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  controller = await startController({ insecureRegistries: [registry.host] });
  shim = await startShim(['--insecure-registry', registry.host, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
}, 120_000);

describe("stats are the cell's unit statistics", () => {
  it('stats, statsp, stats of a created container, update refused when it would change resources, the real exit of a stopped container', async () => {
    const sandbox = await ok(['--timeout', '120s', 'runp', file('pod.json', podConfig)]);
    const ctr = await ok([
      '--timeout',
      '60s',
      'create',
      '--no-pull',
      sandbox,
      file('burn.json', {
        metadata: { name: 'burn', attempt: 0 },
        image: { image: busybox },
        // Some CPU time first, then idle.
        command: ['sh', '-c', 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 3600'],
        labels: { role: 'burn' },
        linux: {},
      }),
      file('pod.json', podConfig),
    ]);
    await ok(['--timeout', '60s', 'start', ctr]);
    const idle = await ok([
      'create',
      '--no-pull',
      sandbox,
      file('idle.json', { metadata: { name: 'idle', attempt: 0 }, image: { image: busybox }, command: ['sleep', '3600'], linux: {} }),
      file('pod.json', podConfig),
    ]);

    // The burner's CPU time grows past 100 ms (the loop takes far more), read from its cell.
    const burn = await waitFor(
      'CPU time of the burning container',
      async () => {
        const s = (JSON.parse(await ok(['stats', '-o', 'json', '--id', ctr])) as { stats: Stats[] }).stats;
        const n = Number(s[0]?.cpu?.usageCoreNanoSeconds?.value ?? 0);
        return n > 100_000_000 ? s[0]! : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 1000 },
    );
    expect(burn.attributes.id).toBe(ctr);
    expect(burn.attributes.metadata.name).toBe('burn');
    expect(Number(burn.cpu!.timestamp)).toBeGreaterThan(0);
    expect(Number(burn.memory?.workingSetBytes?.value ?? 0)).toBeGreaterThan(0);
    expect(Number(burn.memory?.usageBytes?.value ?? 0)).toBeGreaterThan(0);

    // Every container, by label, and the created one without usage (it runs nowhere).
    const all = (JSON.parse(await ok(['stats', '-a', '-o', 'json'])) as { stats: Stats[] }).stats;
    expect(all.map((s) => s.attributes.id).sort()).toEqual([ctr, idle].sort());
    const created = all.find((s) => s.attributes.id === idle)!;
    expect(created.cpu).toBeUndefined();
    expect(created.memory).toBeUndefined();
    expect((JSON.parse(await ok(['stats', '-o', 'json', '--label', 'role=burn'])) as { stats: Stats[] }).stats.map((s) => s.attributes.id)).toEqual([ctr]);
    expect((JSON.parse(await ok(['stats', '-o', 'json', '--label', 'role=none'])) as { stats: Stats[] }).stats).toEqual([]);

    // The sandbox: the sum over the cell's pod (the sandbox unit included) and its containers.
    const podStats = (
      JSON.parse(await ok(['statsp', '-o', 'json', '--id', sandbox])) as {
        stats: { attributes: { id: string }; linux: { cpu: Stats['cpu']; memory: Stats['memory']; containers: Stats[] } }[];
      }
    ).stats;
    expect(podStats).toHaveLength(1);
    expect(podStats[0]!.attributes.id).toBe(sandbox);
    expect(Number(podStats[0]!.linux.cpu?.usageCoreNanoSeconds?.value ?? 0)).toBeGreaterThanOrEqual(Number(burn.cpu!.usageCoreNanoSeconds!.value));
    expect(Number(podStats[0]!.linux.memory?.workingSetBytes?.value ?? 0)).toBeGreaterThan(0);
    expect(podStats[0]!.linux.containers.map((s) => s.attributes.id).sort()).toEqual([ctr, idle].sort());

    // UpdateContainerResources: what the container has is accepted; a change is refused, saying why.
    await ok(['update', ctr]);
    const grow = await crictl(['update', '--memory', '268435456', ctr]);
    expect(grow.code).not.toBe(0);
    expect(grow.stderr).toContain('cannot change in place');
    const missing = await crictl(['update', '--memory', '268435456', 'f'.repeat(64)]);
    expect(missing.stderr).toContain('no container');

    // A container the kubelet stops reports how it really ended: its own exit on SIGTERM, or
    // SIGKILL's 137 once the grace period is over (sleep as PID 1 ignores SIGTERM).
    const trap = await ok([
      'create',
      '--no-pull',
      sandbox,
      file('trap.json', {
        metadata: { name: 'trap', attempt: 0 },
        image: { image: busybox },
        command: ['sh', '-c', 'trap "exit 42" TERM; while true; do sleep 1; done'],
        linux: {},
      }),
      file('pod.json', podConfig),
    ]);
    await ok(['--timeout', '60s', 'start', trap]);
    await ok(['--timeout', '60s', 'stop', '--timeout', '20', trap]);
    const trapped = (JSON.parse(await ok(['inspect', trap])) as { status: { state: string; exitCode: number; reason: string } }).status;
    expect(trapped).toMatchObject({ state: 'CONTAINER_EXITED', exitCode: 42, reason: 'Error' });
    await ok(['--timeout', '60s', 'stop', '--timeout', '1', ctr]);
    expect((JSON.parse(await ok(['inspect', ctr])) as { status: { exitCode: number } }).status.exitCode).toBe(137);

    await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
  }, 600_000);
});
