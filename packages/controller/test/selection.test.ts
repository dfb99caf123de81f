// Instance selection on a table of pod shapes, against the local catalog and a cloud-like one
// (GPU, burstable, spot prices), so each rule of the issue is exercised.
import { describe, expect, it } from 'vitest';
import { PodSpec, type Container } from '@cello/proto/cell';
import { localCatalog, catalogTypes } from '../src/catalog/catalog.js';
import { podDemand, selectCandidates, SelectionError } from '../src/selection/selection.js';
import type { InstanceType } from '../src/providers/provider.js';

const Mi = 1024 * 1024;
const Gi = 1024 * Mi;
const overhead = { cpuMillis: 100, memoryBytes: 64 * Mi };

const cloud: InstanceType[] = [
  { name: 't3.micro', vcpus: 2, memoryMiB: 1024, gpus: 0, baselineCpuFraction: 0.1, onDemandHourlyUsd: 0.0104, spotHourlyUsd: 0.0031, arch: 'amd64' },
  { name: 't3.large', vcpus: 2, memoryMiB: 8192, gpus: 0, baselineCpuFraction: 0.3, onDemandHourlyUsd: 0.0832, spotHourlyUsd: 0.025, arch: 'amd64' },
  { name: 'm5.large', vcpus: 2, memoryMiB: 8192, gpus: 0, onDemandHourlyUsd: 0.096, spotHourlyUsd: 0.035, arch: 'amd64' },
  { name: 'c5.xlarge', vcpus: 4, memoryMiB: 8192, gpus: 0, onDemandHourlyUsd: 0.17, arch: 'amd64' },
  { name: 'm5.4xlarge', vcpus: 16, memoryMiB: 65536, gpus: 0, onDemandHourlyUsd: 0.768, spotHourlyUsd: 0.3, arch: 'amd64' },
  { name: 'g4dn.xlarge', vcpus: 4, memoryMiB: 16384, gpus: 1, gpuType: 'nvidia-t4', onDemandHourlyUsd: 0.526, spotHourlyUsd: 0.2, arch: 'amd64' },
  { name: 'p3.2xlarge', vcpus: 8, memoryMiB: 62464, gpus: 1, gpuType: 'nvidia-v100', onDemandHourlyUsd: 3.06, arch: 'amd64' },
  { name: 'g4dn.12xlarge', vcpus: 48, memoryMiB: 196608, gpus: 4, gpuType: 'nvidia-t4', onDemandHourlyUsd: 3.912, arch: 'amd64' },
];

function c(name: string, req?: { cpu?: number; mem?: number; gpu?: number }, lim?: { cpu?: number; mem?: number; gpu?: number }): Partial<Container> {
  const rl = (x?: { cpu?: number; mem?: number; gpu?: number }) =>
    x ? { cpuMillis: x.cpu, memoryBytes: x.mem, extended: (x.gpu !== undefined ? { 'nvidia.com/gpu': x.gpu } : {}) as Record<string, number> } : undefined;
  return { name, image: 'x', resources: { requests: rl(req), limits: rl(lim) } };
}

function spec(containers: Partial<Container>[], init: Partial<Container>[] = []): PodSpec {
  return PodSpec.fromPartial({ containers, initContainers: init });
}

type Row = {
  what: string;
  containers: Partial<Container>[];
  init?: Partial<Container>[];
  annotations?: Record<string, string>;
  types?: InstanceType[];
  spot?: 'never' | 'preferred' | 'required';
  first?: string;
  firstSpot?: boolean;
  error?: RegExp;
};

const rows: Row[] = [
  { what: 'no requests: the smallest local type', containers: [c('a')], types: catalogTypes(localCatalog()), first: 'local.nano' },
  { what: 'memory request beyond nano', containers: [c('a', { mem: 700 * Mi })], types: catalogTypes(localCatalog()), first: 'local.micro' },
  { what: 'limits stand in for missing requests', containers: [c('a', undefined, { cpu: 1500, mem: 3 * Gi })], types: catalogTypes(localCatalog()), first: 'local.medium' },
  { what: 'containers are summed', containers: [c('a', { cpu: 900 }), c('b', { cpu: 900 })], types: catalogTypes(localCatalog()), first: 'local.medium' },
  { what: 'a big init container dominates', containers: [c('a', { mem: 100 * Mi })], init: [c('i', { mem: 5 * Gi })], types: catalogTypes(localCatalog()), first: 'local.large' },
  { what: 'agent overhead counts (nano baseline is 200m)', containers: [c('a', { cpu: 150 })], types: catalogTypes(localCatalog()), first: 'local.small' },
  { what: 'burstable fits within its baseline', containers: [c('a', { cpu: 100, mem: 512 * Mi })], types: cloud, first: 't3.micro' },
  { what: 'burstable refused above baseline, next burstable fits', containers: [c('a', { cpu: 400, mem: 512 * Mi })], types: cloud, first: 't3.large' },
  { what: 'sustained 2 cores: not burstable', containers: [c('a', { cpu: 1500, mem: 1 * Gi })], types: cloud, first: 'm5.large' },
  { what: 'GPU count', containers: [c('a', { cpu: 1000, gpu: 1 })], types: cloud, first: 'g4dn.xlarge' },
  { what: 'GPU type by annotation', containers: [c('a', { gpu: 1 })], annotations: { 'cello.io/gpu-type': 'nvidia-v100' }, types: cloud, first: 'p3.2xlarge' },
  { what: 'four GPUs', containers: [c('a', { gpu: 2 }), c('b', { gpu: 2 })], types: cloud, first: 'g4dn.12xlarge' },
  { what: 'spot preferred takes the spot price', containers: [c('a', { cpu: 1500 })], types: cloud, spot: 'preferred', first: 'm5.large', firstSpot: true },
  {
    what: 'spot annotation overrides the default',
    containers: [c('a', { cpu: 1500 })],
    annotations: { 'cello.io/spot': 'true' },
    types: cloud,
    first: 'm5.large',
    firstSpot: true,
  },
  { what: 'spot required skips types without spot', containers: [c('a', { cpu: 3500 })], types: cloud, spot: 'required', first: 'm5.4xlarge', firstSpot: true },
  { what: 'pin by exact type', containers: [c('a')], annotations: { 'cello.io/instance-type': 'c5.xlarge' }, types: cloud, first: 'c5.xlarge' },
  { what: 'pin by glob', containers: [c('a')], annotations: { 'cello.io/instance-type': 'm5.*' }, types: cloud, first: 'm5.large' },
  {
    what: 'pin that matches nothing',
    containers: [c('a')],
    annotations: { 'cello.io/instance-type': 'z9.*' },
    types: cloud,
    error: /cello.io\/instance-type.*matches no instance type/,
  },
  { what: 'too big for everything', containers: [c('a', { mem: 1024 * Gi })], types: cloud, error: /no instance type fits .*1048640 MiB memory/ },
  { what: 'bad spot annotation names the field', containers: [c('a')], annotations: { 'cello.io/spot': 'maybe' }, types: cloud, error: /metadata.annotations\["cello.io\/spot"\]/ },
];

describe('instance selection', () => {
  for (const r of rows) {
    it(r.what, () => {
      const run = () => selectCandidates(r.types!, { spec: spec(r.containers, r.init), annotations: r.annotations ?? {}, overhead, defaultSpot: r.spot ?? 'never' });
      if (r.error) {
        expect(run).toThrow(SelectionError);
        expect(run).toThrow(r.error);
        return;
      }
      const cands = run();
      expect(cands[0]!.type.name).toBe(r.first);
      expect(cands[0]!.spot).toBe(r.firstSpot ?? false);
      // Cheapest first, and every candidate fits: the fallback order is sound.
      for (let i = 1; i < cands.length; i++) expect(cands[i]!.hourlyUsd).toBeGreaterThanOrEqual(cands[i - 1]!.hourlyUsd);
    });
  }

  it('computes demand as the scheduler does', () => {
    const d = podDemand(spec([c('a', { cpu: 200, mem: 100 * Mi }), c('b', undefined, { cpu: 300, mem: 50 * Mi })], [c('i', { cpu: 1000, mem: 10 * Mi })]), {}, overhead);
    expect(d.cpuMillis).toBe(1000 + 100);
    expect(d.memoryBytes).toBe(150 * Mi + 64 * Mi);
  });

  it('the local catalog records its source and date', () => {
    const cat = localCatalog();
    expect(cat.source.length).toBeGreaterThan(10);
    expect(cat.retrievedAt).toMatch(/^\d{4}-\d{2}-\d{2}/);
  });
});
