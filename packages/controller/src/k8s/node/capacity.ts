// What the Node offers the scheduler, from the provider's real limits (the cloud account's
// quota, the local host's resources) and what is in use against them.
//
// The scheduler subtracts the requests of the pods already bound to a node from its allocatable
// figures itself. Our pods' cells are already counted in the provider's "used" (a cell is a
// whole instance, bigger than the pod's requests), so the pods of this node are added back:
// allocatable = headroom + what this node's pods request, and the scheduler's own arithmetic
// (allocatable − requests of bound pods) comes out at the provider's real headroom.
import { formatCpuMillis, parseBytes, parseCpuMillis } from '@cello/proto';
import type { InstanceType, ProviderCapacity } from '../../providers/provider.js';
import type { KPod } from './manifest.js';
import type { NodeCapacity } from './node.js';

export interface NodePodsUsage {
  pods: number;
  cpuMillis: number;
  memoryMiB: number;
}

type Resources = { requests?: Record<string, string | number> };

/** Requests of the pods on this node that still hold a cell (not Succeeded/Failed). */
export function podsUsage(pods: KPod[]): NodePodsUsage {
  const out = { pods: 0, cpuMillis: 0, memoryMiB: 0 };
  for (const p of pods) {
    if (p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed') continue;
    out.pods++;
    // Kubernetes' effective request: the larger of the containers' sum and any init container.
    const req = (cs: Record<string, unknown>[] | undefined, key: 'cpu' | 'memory') =>
      (cs ?? [])
        .map((c) => (c.resources as Resources | undefined)?.requests?.[key])
        .map((q) => (q === undefined ? 0 : key === 'cpu' ? parseCpuMillis(q) : parseBytes(q) / 2 ** 20));
    const eff = (key: 'cpu' | 'memory') =>
      Math.max(
        req(p.spec.containers, key).reduce((a, b) => a + b, 0),
        ...req(p.spec.initContainers, key),
      );
    out.cpuMillis += eff('cpu');
    out.memoryMiB += eff('memory');
  }
  return out;
}

export function nodeCapacity(pc: ProviderCapacity, types: InstanceType[], onNode: NodePodsUsage): { capacity: NodeCapacity; allocatable: NodeCapacity } {
  if (!types.length) throw new Error('the provider offers no instance types');
  const maxV = Math.max(...types.map((t) => t.vcpus));
  const maxM = Math.max(...types.map((t) => t.memoryMiB));
  const minV = Math.min(...types.map((t) => t.vcpus));
  const minM = Math.min(...types.map((t) => t.memoryMiB));
  const maxG = Math.max(...types.map((t) => t.gpus));
  const free = (x: { limit: number; used: number }) => Math.max(0, x.limit - x.used);
  const instFree = free(pc.instances);
  const cpuCap = pc.vcpus?.limit ?? pc.sharedCpus ?? pc.instances.limit * maxV;
  // Shared CPUs are compressible: all of them stay allocatable.
  const cpuFree = pc.vcpus ? free(pc.vcpus) : (pc.sharedCpus ?? instFree * maxV);
  const memCap = pc.memoryMiB?.limit ?? pc.instances.limit * maxM;
  const memFree = pc.memoryMiB ? free(pc.memoryMiB) : instFree * maxM;
  // Every pod takes a cell of at least the smallest type.
  const podsFree = Math.min(instFree, pc.vcpus ? Math.floor(cpuFree / minV) : Infinity, pc.memoryMiB ? Math.floor(memFree / minM) : Infinity);
  const capacity: NodeCapacity = {
    cpu: formatCpuMillis(Math.floor(cpuCap * 1000)),
    memory: `${Math.floor(memCap)}Mi`,
    pods: String(pc.instances.limit),
    ...(maxG ? { 'nvidia.com/gpu': String(pc.instances.limit * maxG) } : {}),
  };
  const allocatable: NodeCapacity = {
    cpu: formatCpuMillis(Math.floor(Math.min(cpuCap * 1000, cpuFree * 1000 + onNode.cpuMillis))),
    memory: `${Math.floor(Math.min(memCap, memFree + onNode.memoryMiB))}Mi`,
    pods: String(Math.min(pc.instances.limit, podsFree + onNode.pods)),
    ...(maxG ? { 'nvidia.com/gpu': String(Math.min(pc.instances.limit, instFree + onNode.pods) * maxG) } : {}),
  };
  return { capacity, allocatable };
}
