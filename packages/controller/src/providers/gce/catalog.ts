// The gce machine-type catalog: specs from machineTypes.aggregatedList over the configured
// zones (read live once and cached, or from the bundled snapshot data/gce-machine-types.json
// for offline use), joined with prices from a data file (data/gce-prices.json, entered by hand
// from the public price list and dated; replaceable by configuration). A type with no known
// price is left out: selection cannot rank what it cannot price. The same price and spec file
// formats as the aws catalog.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { MachineTypesClient, protos } from '@google-cloud/compute';
import { z } from 'zod';
import { priceSpecs, pricesSchema, specSnapshotSchema, type SpecSnapshot, type TypeSpec } from '../aws/catalog.js';
import type { InstanceType } from '../provider.js';

function dataPath(name: string): string {
  // dist/providers/gce/catalog.js and src/providers/gce/catalog.ts are both three levels below the package.
  return fileURLToPath(new URL(`../../../data/${name}`, import.meta.url));
}

/** The aws price format plus per-unit prices of custom machine types, by family. */
export const gcePricesSchema = pricesSchema.extend({
  customHourly: z.record(z.string(), z.object({ vcpu: z.number().positive(), memoryGiB: z.number().positive() }).strict()).default({}),
});
export type GcePrices = z.infer<typeof gcePricesSchema>;

export function loadGcePrices(path = dataPath('gce-prices.json')): GcePrices {
  const r = gcePricesSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  if (!r.success) throw new Error(`${path}: ${r.error.issues[0]!.path.join('.') || '(root)'}: ${r.error.issues[0]!.message}`);
  return r.data;
}

const CUSTOM_RE = /^(e2|n2|n2d)-custom-(\d+)-(\d+)$/;

/** A custom machine type's spec from its name (FAMILY-custom-VCPUS-MEMORY_MB); undefined if GCE would refuse it. */
export function customSpec(name: string): TypeSpec | undefined {
  const m = CUSTOM_RE.exec(name);
  if (!m) return undefined;
  const vcpus = Number(m[2]);
  const memoryMiB = Number(m[3]);
  const perVcpuGiB = memoryMiB / 1024 / vcpus;
  // GCE's rules for these families: an even vCPU count from 2, memory in 256 MB steps, 0.5-8 GB per vCPU.
  if (vcpus < 2 || vcpus % 2 !== 0 || vcpus > (m[1] === 'e2' ? 32 : 80) || memoryMiB % 256 !== 0 || perVcpuGiB < 0.5 || perVcpuGiB > 8) return undefined;
  return { name, vcpus, memoryMiB, gpus: 0, arch: 'amd64' };
}

/** The custom shapes offered to selection: each family x vCPU count x GiB per vCPU that GCE accepts and the price file prices. */
export function customTypes(c: { families: string[]; vcpus: number[]; memoryGiBPerVcpu: number[] }, prices: GcePrices): InstanceType[] {
  const out: InstanceType[] = [];
  for (const f of c.families) {
    const unit = prices.customHourly[f];
    if (!unit) continue;
    for (const v of c.vcpus)
      for (const g of c.memoryGiBPerVcpu) {
        const spec = customSpec(`${f}-custom-${v}-${Math.round(v * g * 1024)}`);
        if (!spec) continue;
        const od = Math.round((v * unit.vcpu + (spec.memoryMiB / 1024) * unit.memoryGiB) * 1e6) / 1e6;
        out.push({ ...spec, onDemandHourlyUsd: od, ...(prices.spotEstimateFactor !== undefined ? { spotHourlyUsd: Math.round(od * prices.spotEstimateFactor * 1e6) / 1e6 } : {}) });
      }
  }
  return out;
}

export function loadGceSpecSnapshot(path = dataPath('gce-machine-types.json')): SpecSnapshot {
  const r = specSnapshotSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  if (!r.success) throw new Error(`${path}: ${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`);
  return r.data;
}

/**
 * Sustained share per vCPU of the shared-core E2 types (GCE documents the whole machine's:
 * e2-micro 0.25 vCPU, e2-small 0.5, e2-medium 1, each over 2 vCPUs).
 */
const SHARED_CORE_BASELINE: Record<string, number> = { 'e2-micro': 0.125, 'e2-small': 0.25, 'e2-medium': 0.5, 'f1-micro': 0.2, 'g1-small': 0.5 };

/** One machineTypes entry as Cello sees it; undefined for types it cannot use. */
export function specFromMachineType(m: protos.google.cloud.compute.v1.IMachineType): TypeSpec | undefined {
  const name = m.name;
  const vcpus = m.guestCpus;
  const mem = m.memoryMb;
  if (!name || !vcpus || !mem) return undefined;
  if (m.deprecated?.state && m.deprecated.state !== 'ACTIVE') return undefined;
  // GCE reports X86_64 or ARM64; older entries have no architecture and are x86.
  const arch = m.architecture === 'ARM64' ? 'arm64' : !m.architecture || m.architecture === 'X86_64' ? 'amd64' : undefined;
  if (!arch) return undefined;
  const gpus = (m.accelerators ?? []).reduce((n, a) => n + (a.guestAcceleratorCount ?? 0), 0);
  const gpuType = m.accelerators?.[0]?.guestAcceleratorType ?? undefined;
  const baseline = m.isSharedCpu ? SHARED_CORE_BASELINE[name] : undefined;
  return {
    name,
    vcpus,
    memoryMiB: mem,
    gpus,
    ...(gpuType ? { gpuType } : {}),
    ...(baseline !== undefined ? { baselineCpuFraction: baseline } : {}),
    arch,
  };
}

export interface CatalogSpecs {
  specs: TypeSpec[];
  /** Zones offering each type (live); absent from the snapshot, which assumes every zone. */
  zonesOf?: Map<string, Set<string>>;
  origin: 'live' | 'snapshot';
}

/** Every machine type of the given zones, one aggregatedList (paged by the client). */
export async function listMachineTypes(client: MachineTypesClient, project: string, zones: string[], timeoutMs: number): Promise<CatalogSpecs> {
  const want = new Set(zones.map((z) => `zones/${z}`));
  const specs = new Map<string, TypeSpec>();
  const zonesOf = new Map<string, Set<string>>();
  for await (const [scope, list] of client.aggregatedListAsync({ project, returnPartialSuccess: true }, { timeout: timeoutMs, autoPaginate: false })) {
    if (!want.has(scope)) continue;
    for (const m of list.machineTypes ?? []) {
      const s = specFromMachineType(m);
      if (!s) continue;
      specs.set(s.name, s);
      let zs = zonesOf.get(s.name);
      if (!zs) zonesOf.set(s.name, (zs = new Set()));
      zs.add(scope.slice('zones/'.length));
    }
  }
  return { specs: [...specs.values()].sort((a, b) => a.name.localeCompare(b.name)), zonesOf, origin: 'live' };
}

/** Reads the catalog live once (it does not change within a controller's life), the snapshot when that fails. */
export class GceCatalog {
  private cached: Promise<CatalogSpecs> | undefined;
  constructor(
    private readonly opts: {
      live: boolean;
      prices: GcePrices;
      allow?: string[];
      custom?: { families: string[]; vcpus: number[]; memoryGiBPerVcpu: number[] };
      read: () => Promise<CatalogSpecs>;
      onLiveError?: (err: unknown) => void;
    },
  ) {}

  specs(): Promise<CatalogSpecs> {
    this.cached ??= (async () => {
      if (this.opts.live) {
        try {
          return await this.opts.read();
        } catch (err) {
          this.opts.onLiveError?.(err);
        }
      }
      return { specs: loadGceSpecSnapshot().types, origin: 'snapshot' as const };
    })();
    return this.cached;
  }

  async spec(name: string): Promise<TypeSpec | undefined> {
    if (this.opts.custom && this.opts.custom.families.includes(CUSTOM_RE.exec(name)?.[1] ?? '')) return customSpec(name);
    return (await this.specs()).specs.find((s) => s.name === name);
  }

  /** The configured zones that offer the type (all of them when the catalog cannot tell). */
  async zonesFor(name: string, zones: string[]): Promise<string[]> {
    // A custom type is offered where its family is (its -standard-2 type tells).
    const family = CUSTOM_RE.exec(name)?.[1];
    const z = (await this.specs()).zonesOf?.get(family ? `${family}-standard-2` : name);
    return z ? zones.filter((x) => z.has(x)) : zones;
  }

  async types(): Promise<InstanceType[]> {
    const predefined = priceSpecs((await this.specs()).specs, this.opts.prices, this.opts.allow);
    return this.opts.custom ? [...predefined, ...customTypes(this.opts.custom, this.opts.prices)] : predefined;
  }
}
