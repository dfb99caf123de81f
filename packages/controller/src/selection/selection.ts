// Instance selection: the cheapest instance type that fits a pod. A pod's demand is computed the
// way the Kubernetes scheduler does (each container's request, or its limit when no request is
// given; app containers summed; the largest init container counts when it is bigger, since init
// containers run one at a time before the app containers), plus the agent's own overhead.
import type { PodSpec, ResourceList } from '@cello/proto/cell';
import type { InstanceType } from '../providers/provider.js';
import { CelloError } from '../errors.js';

export const ANNOTATION_INSTANCE_TYPE = 'cello.io/instance-type';
export const ANNOTATION_SPOT = 'cello.io/spot';
export const ANNOTATION_GPU_TYPE = 'cello.io/gpu-type';
const GPU_RESOURCES = ['nvidia.com/gpu', 'amd.com/gpu', 'gpu'];

export type SpotPreference = 'never' | 'preferred' | 'required';

export interface Demand {
  cpuMillis: number;
  memoryBytes: number;
  gpus: number;
  gpuType?: string;
}

export interface Overhead {
  cpuMillis: number;
  memoryBytes: number;
}

export interface Candidate {
  type: InstanceType;
  spot: boolean;
  hourlyUsd: number;
}

export interface SelectionInput {
  spec: PodSpec;
  annotations: Record<string, string>;
  overhead: Overhead;
  defaultSpot: SpotPreference;
  /** Cell architectures that can run the pod (selection/architectures.ts); any when absent. */
  architectures?: readonly string[];
}

/** A pod too big for every type is a precondition the cluster may meet later; the rest is the pod's own fault. */
export class SelectionError extends CelloError {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(reason === 'NoFittingInstanceType' ? 'FailedPrecondition' : 'InvalidArgument', message);
  }
}

function one(list: ResourceList | undefined, fallback: ResourceList | undefined) {
  const gpu = (l: ResourceList | undefined) => {
    if (!l) return undefined;
    for (const k of GPU_RESOURCES) if (l.extended[k] !== undefined) return l.extended[k];
    return undefined;
  };
  return {
    cpu: list?.cpuMillis ?? fallback?.cpuMillis ?? 0,
    mem: list?.memoryBytes ?? fallback?.memoryBytes ?? 0,
    // Extended resources cannot be overcommitted: Kubernetes requires request == limit.
    gpu: gpu(list) ?? gpu(fallback) ?? 0,
  };
}

export function podDemand(spec: PodSpec, annotations: Record<string, string>, overhead: Overhead): Demand {
  let cpu = 0;
  let mem = 0;
  let gpu = 0;
  for (const c of spec.containers) {
    const r = one(c.resources?.requests, c.resources?.limits);
    cpu += r.cpu;
    mem += r.mem;
    gpu += r.gpu;
  }
  for (const c of spec.initContainers) {
    const r = one(c.resources?.requests, c.resources?.limits);
    cpu = Math.max(cpu, r.cpu);
    mem = Math.max(mem, r.mem);
    gpu = Math.max(gpu, r.gpu);
  }
  const d: Demand = { cpuMillis: cpu + overhead.cpuMillis, memoryBytes: mem + overhead.memoryBytes, gpus: gpu };
  const gpuType = annotations[ANNOTATION_GPU_TYPE] ?? spec.nodeSelector['cello.io/gpu-type'];
  if (gpuType) d.gpuType = gpuType;
  return d;
}

function globToRegExp(glob: string): RegExp {
  const esc = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${esc}$`);
}

/** Why a type does not fit, or undefined when it fits. */
export function misfit(t: InstanceType, d: Demand): string | undefined {
  const cpuCapacity = t.vcpus * 1000;
  if (d.cpuMillis > cpuCapacity) return `needs ${d.cpuMillis}m CPU, has ${cpuCapacity}m`;
  if (d.memoryBytes > t.memoryMiB * 1024 * 1024) return `needs ${mib(d.memoryBytes)} MiB memory, has ${t.memoryMiB} MiB`;
  if (d.gpus > t.gpus) return `needs ${d.gpus} GPU, has ${t.gpus}`;
  if (d.gpuType && d.gpus > 0 && t.gpuType?.toLowerCase() !== d.gpuType.toLowerCase()) return `needs GPU type ${d.gpuType}`;
  // A burstable type fits only when the sustained load fits its baseline; beyond it the
  // instance would run out of CPU credits and be throttled.
  if (t.baselineCpuFraction !== undefined && d.cpuMillis > cpuCapacity * t.baselineCpuFraction) {
    return `burstable baseline ${Math.round(cpuCapacity * t.baselineCpuFraction)}m below ${d.cpuMillis}m CPU`;
  }
  return undefined;
}

function mib(b: number): number {
  return Math.ceil(b / 1024 / 1024);
}

function spotPreference(annotations: Record<string, string>, dflt: SpotPreference): SpotPreference {
  const v = annotations[ANNOTATION_SPOT];
  if (v === undefined) return dflt;
  switch (v.toLowerCase()) {
    case 'true':
    case 'preferred':
      return 'preferred';
    case 'required':
      return 'required';
    case 'false':
    case 'never':
      return 'never';
    default:
      throw new SelectionError(`metadata.annotations["${ANNOTATION_SPOT}"]: "${v}" is not one of true, false, preferred, required, never`, 'InvalidAnnotation');
  }
}

/**
 * Candidates in the order they should be tried: cheapest first. A launch that fails for
 * capacity moves on to the next one. Throws SelectionError (with a reason for the pod's
 * condition) when nothing fits.
 */
export function selectCandidates(types: InstanceType[], input: SelectionInput): Candidate[] {
  const demand = podDemand(input.spec, input.annotations, input.overhead);
  const spot = spotPreference(input.annotations, input.defaultSpot);
  const pin = input.annotations[ANNOTATION_INSTANCE_TYPE];
  let pool = types;
  if (pin !== undefined) {
    const patterns = pin
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)
      .map(globToRegExp);
    pool = types.filter((t) => patterns.some((re) => re.test(t.name)));
    if (pool.length === 0) {
      throw new SelectionError(`metadata.annotations["${ANNOTATION_INSTANCE_TYPE}"]: "${pin}" matches no instance type of this provider`, 'NoMatchingInstanceType');
    }
  }
  const out: Candidate[] = [];
  const reasons: string[] = [];
  for (const t of pool) {
    // GPU machines are for GPU pods: never the "cheapest fit" for a pod that needs none,
    // unless the pod pins the type.
    const why =
      (input.architectures && !input.architectures.includes(t.arch) ? `${t.arch} cannot run the pod's images (needs ${input.architectures.join(' or ')})` : undefined) ??
      misfit(t, demand) ??
      (demand.gpus === 0 && t.gpus > 0 && pin === undefined ? 'has GPUs the pod does not request' : undefined);
    if (why) {
      reasons.push(`${t.name}: ${why}`);
      continue;
    }
    if (spot !== 'never' && t.spotHourlyUsd !== undefined) out.push({ type: t, spot: true, hourlyUsd: t.spotHourlyUsd });
    if (spot !== 'required') out.push({ type: t, spot: false, hourlyUsd: t.onDemandHourlyUsd });
  }
  if (out.length === 0) {
    const what =
      `${demand.cpuMillis}m CPU, ${mib(demand.memoryBytes)} MiB memory` +
      (demand.gpus ? `, ${demand.gpus} GPU${demand.gpuType ? ` (${demand.gpuType})` : ''}` : '') +
      (spot === 'required' ? ', spot' : '');
    throw new SelectionError(`no instance type fits ${what} (including agent overhead)` + (reasons.length ? `: ${reasons.slice(0, 4).join('; ')}` : ''), 'NoFittingInstanceType');
  }
  // Spot before on-demand only matters through price; ties go to the smaller machine.
  out.sort(
    (a, b) =>
      a.hourlyUsd - b.hourlyUsd || a.type.vcpus - b.type.vcpus || a.type.memoryMiB - b.type.memoryMiB || a.type.name.localeCompare(b.type.name) || Number(b.spot) - Number(a.spot),
  );
  return out;
}
