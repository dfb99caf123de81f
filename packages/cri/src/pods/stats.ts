// CRI stats from the cell's unit statistics: the controller's TopPods (what `cellctl top pods`
// reads: each agent's Stats, cumulative CPU time, the CPU rate and memory per unit). A container
// that does not run on a cell now (created, exited, its sandbox stopped) is listed with its
// attributes only: it uses nothing, and nothing is invented for it. The writable layer and swap
// are not reported: the agent does not measure them per unit.
import type { ContainerUsage, PodUsage } from '@cello/proto/controller';
import type { ContainerStats, CpuUsage, MemoryUsage, PodSandboxStats } from '../gen/runtime/v1/api.js';
import type { ContainerRecord, SandboxRecord } from './sandbox-store.js';

const nanosOf = (t: Date | undefined): bigint => BigInt((t ?? new Date()).getTime()) * 1_000_000n;

function cpu(ts: bigint, cumulativeNanos: number, cores: number): CpuUsage {
  return { timestamp: ts, usageCoreNanoSeconds: { value: BigInt(Math.round(cumulativeNanos)) }, usageNanoCores: { value: BigInt(Math.round(cores * 1e9)) }, psi: undefined };
}

function memory(ts: bigint, u: { workingSet: number; usage: number; rss: number }): MemoryUsage {
  return {
    timestamp: ts,
    workingSetBytes: { value: BigInt(u.workingSet) },
    availableBytes: undefined,
    usageBytes: { value: BigInt(u.usage) },
    rssBytes: { value: BigInt(u.rss) },
    pageFaults: undefined,
    majorPageFaults: undefined,
    psi: undefined,
  };
}

/** A container's stats: usage when its unit runs on the cell (`usage`), else its attributes only. */
export function containerStats(c: ContainerRecord, usage: { unit: ContainerUsage; time: Date | undefined } | undefined): ContainerStats {
  const ts = nanosOf(usage?.time);
  const u = usage?.unit;
  return {
    attributes: { id: c.id, metadata: { name: c.name, attempt: c.attempt }, labels: c.labels, annotations: c.annotations },
    cpu: u ? cpu(ts, u.cpuUsageNanos, u.cpuCores) : undefined,
    memory: u ? memory(ts, { workingSet: u.memoryWorkingSetBytes, usage: u.memoryUsageBytes, rss: u.memoryRssBytes }) : undefined,
    writableLayer: undefined,
    swap: undefined,
    io: undefined,
  };
}

/** The unit's usage in the pod's figures, for a container that runs. */
export function unitUsage(pod: PodUsage | undefined, c: ContainerRecord): { unit: ContainerUsage; time: Date | undefined } | undefined {
  if (c.phase !== 'started') return undefined;
  const unit = pod?.containers.find((x) => x.name === c.unit);
  return unit ? { unit, time: pod?.time } : undefined;
}

/** A sandbox's stats: the sum over every unit of its cell's pod (the sandbox unit included), and each container's. */
export function sandboxStats(s: SandboxRecord, pod: PodUsage | undefined): PodSandboxStats {
  const ts = nanosOf(pod?.time);
  const units = pod?.containers ?? [];
  const sum = (f: (u: ContainerUsage) => number) => units.reduce((a, u) => a + f(u), 0);
  return {
    attributes: { id: s.id, metadata: s.metadata, labels: s.labels, annotations: s.annotations },
    linux: {
      cpu: pod
        ? cpu(
            ts,
            sum((u) => u.cpuUsageNanos),
            sum((u) => u.cpuCores),
          )
        : undefined,
      memory: pod ? memory(ts, { workingSet: sum((u) => u.memoryWorkingSetBytes), usage: sum((u) => u.memoryUsageBytes), rss: sum((u) => u.memoryRssBytes) }) : undefined,
      network: undefined,
      process: undefined,
      containers: s.containers.map((c) => containerStats(c, unitUsage(pod, c))),
      io: undefined,
    },
    windows: undefined,
  };
}
