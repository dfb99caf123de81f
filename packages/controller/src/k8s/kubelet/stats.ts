// Resource usage for metrics-server and `kubectl top`: the kubelet's /stats/summary (JSON) and
// /metrics/resource (Prometheus text), built from each pod's cell agent Stats call. The node's
// figures are the sum over its cells.
import type { CellAgentClient, StatsResponse, UnitStats } from '@cello/proto/cell';
import type { AgentAccess } from '../../agents/pool.js';
import { callUnary } from '../../agents/pool.js';
import type { Controller } from '../controller-client.js';
import type { KPod } from '../node/manifest.js';

export interface PodUsage {
  pod: KPod;
  stats: StatsResponse;
}

/** Stats of every running pod of the node; pods without a running cell are left out. */
export async function collectStats(controller: Controller, agents: AgentAccess, pods: KPod[]): Promise<PodUsage[]> {
  const running = pods.filter((p) => p.status?.phase === 'Running');
  if (!running.length) return [];
  const cells = new Map((await controller.cells()).map((c) => [c.id, c.address]));
  const out = await Promise.all(
    running.map(async (pod) => {
      const cp = await controller.get(pod.metadata.namespace, pod.metadata.name).catch(() => undefined);
      const address = cp?.cellId ? cells.get(cp.cellId) : undefined;
      if (!cp?.cellId || !address) return undefined;
      const client: CellAgentClient = agents.get(cp.cellId, address);
      const stats = await callUnary<StatsResponse>(client, 'stats', {}, 5000).catch(() => undefined);
      return stats ? { pod, stats } : undefined;
    }),
  );
  return out.filter((x): x is PodUsage => !!x);
}

const iso = (d?: Date) => (d ? new Date(d).toISOString() : new Date().toISOString());
const nanoCores = (cores: number) => Math.round(cores * 1e9);

function containers(u: PodUsage): UnitStats[] {
  const names = new Set(u.pod.spec.containers.map((c) => c.name));
  return u.stats.units.filter((x) => names.has(x.name));
}

export function summary(nodeName: string, startTime: string, usage: PodUsage[]): object {
  const now = new Date().toISOString();
  let nodeCpu = 0;
  let nodeCpuNanos = 0;
  let nodeWs = 0;
  let nodeUsage = 0;
  const pods = usage.map((u) => {
    const time = iso(u.stats.time);
    const cs = containers(u).map((c) => ({
      name: c.name,
      startTime: iso(c.startTime),
      cpu: { time, usageNanoCores: nanoCores(c.cpuCores), usageCoreNanoSeconds: c.cpuUsageNanos },
      memory: { time, usageBytes: c.memoryUsageBytes, workingSetBytes: c.memoryWorkingSetBytes, rssBytes: c.memoryRssBytes },
    }));
    const cpu = containers(u).reduce((a, c) => a + c.cpuCores, 0);
    const cpuNanos = containers(u).reduce((a, c) => a + c.cpuUsageNanos, 0);
    const ws = containers(u).reduce((a, c) => a + c.memoryWorkingSetBytes, 0);
    const used = containers(u).reduce((a, c) => a + c.memoryUsageBytes, 0);
    nodeCpu += cpu;
    nodeCpuNanos += cpuNanos;
    nodeWs += ws;
    nodeUsage += used;
    return {
      podRef: { name: u.pod.metadata.name, namespace: u.pod.metadata.namespace, uid: u.pod.metadata.uid },
      startTime: (u.pod.status?.startTime as string | undefined) ?? time,
      containers: cs,
      cpu: { time, usageNanoCores: nanoCores(cpu), usageCoreNanoSeconds: cpuNanos },
      memory: { time, usageBytes: used, workingSetBytes: ws },
    };
  });
  return {
    node: {
      nodeName,
      startTime,
      cpu: { time: now, usageNanoCores: nanoCores(nodeCpu), usageCoreNanoSeconds: nodeCpuNanos },
      memory: { time: now, usageBytes: nodeUsage, workingSetBytes: nodeWs },
    },
    pods,
  };
}

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

/** The kubelet's /metrics/resource, which metrics-server scrapes. */
export function resourceMetrics(usage: PodUsage[]): string {
  const lines: string[] = [];
  const metric = (name: string, help: string, type: string, samples: [Record<string, string>, number, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value, ts] of samples) {
      const l = Object.entries(labels)
        .map(([k, v]) => `${k}="${esc(v)}"`)
        .join(',');
      lines.push(`${name}${l ? `{${l}}` : ''} ${value} ${ts}`);
    }
  };
  const cpu: [Record<string, string>, number, number][] = [];
  const mem: [Record<string, string>, number, number][] = [];
  const start: [Record<string, string>, number, number][] = [];
  const podCpu: [Record<string, string>, number, number][] = [];
  const podMem: [Record<string, string>, number, number][] = [];
  let nodeCpu = 0;
  let nodeMem = 0;
  for (const u of usage) {
    const ts = u.stats.time ? new Date(u.stats.time).getTime() : Date.now();
    const pl = { namespace: u.pod.metadata.namespace, pod: u.pod.metadata.name };
    let pc = 0;
    let pm = 0;
    for (const c of containers(u)) {
      const l = { container: c.name, ...pl };
      cpu.push([l, c.cpuUsageNanos / 1e9, ts]);
      mem.push([l, c.memoryWorkingSetBytes, ts]);
      if (c.startTime) start.push([l, new Date(c.startTime).getTime() / 1000, ts]);
      pc += c.cpuUsageNanos / 1e9;
      pm += c.memoryWorkingSetBytes;
    }
    podCpu.push([pl, pc, ts]);
    podMem.push([pl, pm, ts]);
    nodeCpu += pc;
    nodeMem += pm;
  }
  const now = Date.now();
  metric('container_cpu_usage_seconds_total', '[STABLE] Cumulative cpu time consumed by the container in core-seconds', 'counter', cpu);
  metric('container_memory_working_set_bytes', '[STABLE] Current working set of the container in bytes', 'gauge', mem);
  metric('container_start_time_seconds', '[STABLE] Start time of the container since unix epoch in seconds', 'gauge', start);
  metric('node_cpu_usage_seconds_total', '[STABLE] Cumulative cpu time consumed by the node in core-seconds', 'counter', [[{}, nodeCpu, now]]);
  metric('node_memory_working_set_bytes', '[STABLE] Current working set of the node in bytes', 'gauge', [[{}, nodeMem, now]]);
  metric('pod_cpu_usage_seconds_total', '[STABLE] Cumulative cpu time consumed by the pod in core-seconds', 'counter', podCpu);
  metric('pod_memory_working_set_bytes', '[STABLE] Current working set of the pod in bytes', 'gauge', podMem);
  metric('scrape_error', '[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise', 'gauge', [[{}, 0, now]]);
  return lines.join('\n') + '\n';
}
