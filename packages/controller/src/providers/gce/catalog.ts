// The gce machine-type catalog: specs from machineTypes.aggregatedList over the configured
// zones (read live once and cached, or from the bundled snapshot data/gce-machine-types.json
// for offline use), joined with prices from a data file (data/gce-prices.json, entered by hand
// from the public price list and dated; replaceable by configuration). A type with no known
// price is left out: selection cannot rank what it cannot price. The same price and spec file
// formats as the aws catalog.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { MachineTypesClient, protos } from '@google-cloud/compute';
import { loadPrices as loadPriceFile, priceSpecs, specSnapshotSchema, type Prices, type SpecSnapshot, type TypeSpec } from '../aws/catalog.js';
import type { InstanceType } from '../provider.js';

function dataPath(name: string): string {
  // dist/providers/gce/catalog.js and src/providers/gce/catalog.ts are both three levels below the package.
  return fileURLToPath(new URL(`../../../data/${name}`, import.meta.url));
}

export function loadGcePrices(path = dataPath('gce-prices.json')): Prices {
  return loadPriceFile(path);
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
  constructor(private readonly opts: { live: boolean; prices: Prices; allow?: string[]; read: () => Promise<CatalogSpecs>; onLiveError?: (err: unknown) => void }) {}

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
    return (await this.specs()).specs.find((s) => s.name === name);
  }

  /** The configured zones that offer the type (all of them when the catalog cannot tell). */
  async zonesFor(name: string, zones: string[]): Promise<string[]> {
    const z = (await this.specs()).zonesOf?.get(name);
    return z ? zones.filter((x) => z.has(x)) : zones;
  }

  async types(): Promise<InstanceType[]> {
    return priceSpecs((await this.specs()).specs, this.opts.prices, this.opts.allow);
  }
}
