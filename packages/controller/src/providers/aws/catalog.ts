// The aws instance catalog: specs from DescribeInstanceTypes (read live once and cached, or
// from the bundled snapshot data/aws-instance-types.json for offline use) joined with prices
// from a data file (data/aws-prices.json, replaceable by configuration). Both files say where
// their figures came from and when; a type with no known price is left out, because selection
// cannot rank what it cannot price.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DescribeInstanceTypesCommand, type EC2Client, type InstanceTypeInfo } from '@aws-sdk/client-ec2';
import { z } from 'zod';
import type { InstanceType } from '../provider.js';

/** Sustained CPU share per vCPU of burstable families, from AWS's burstable-instance documentation. */
const BURST_BASELINE: Record<string, number> = {
  nano: 0.05,
  micro: 0.1,
  small: 0.2,
  medium: 0.2,
  large: 0.3,
  xlarge: 0.4,
  '2xlarge': 0.4,
};
const T2_BASELINE: Record<string, number> = {
  nano: 0.05,
  micro: 0.1,
  small: 0.2,
  medium: 0.2,
  large: 0.3,
  xlarge: 0.225,
  '2xlarge': 0.16875,
};

export type TypeSpec = Omit<InstanceType, 'onDemandHourlyUsd' | 'spotHourlyUsd'>;

const specSchema = z.object({
  name: z.string().min(1),
  vcpus: z.number().positive(),
  memoryMiB: z.number().positive(),
  gpus: z.number().int().nonnegative(),
  gpuType: z.string().optional(),
  baselineCpuFraction: z.number().gt(0).lte(1).optional(),
  arch: z.enum(['amd64', 'arm64']),
});

export const specSnapshotSchema = z.object({
  source: z.string().min(1),
  retrievedAt: z.string().min(1),
  types: z.array(specSchema).min(1),
});

export const pricesSchema = z.object({
  source: z.string().min(1),
  retrievedAt: z.string().min(1),
  region: z.string().min(1),
  currency: z.literal('USD'),
  onDemandHourly: z.record(z.string(), z.number().nonnegative()),
  /** Known spot prices, where the file has them. */
  spotHourly: z.record(z.string(), z.number().nonnegative()).default({}),
  /** For types without a spot price: on-demand × this factor, an estimate (spot prices move). */
  spotEstimateFactor: z.number().gt(0).lte(1).optional(),
});
export type Prices = z.infer<typeof pricesSchema>;
export type SpecSnapshot = z.infer<typeof specSnapshotSchema>;

function dataPath(name: string): string {
  // dist/providers/aws/catalog.js and src/providers/aws/catalog.ts are both three levels below the package.
  return fileURLToPath(new URL(`../../../data/${name}`, import.meta.url));
}

function parseWith<T>(schema: z.ZodType<T>, data: unknown, origin: string): T {
  const r = schema.safeParse(data);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(`${origin}: ${i.path.join('.') || '(root)'}: ${i.message}`);
  }
  return r.data;
}

export function loadPrices(path = dataPath('aws-prices.json')): Prices {
  return parseWith(pricesSchema, JSON.parse(readFileSync(path, 'utf8')), path);
}

export function loadSpecSnapshot(path = dataPath('aws-instance-types.json')): SpecSnapshot {
  return parseWith(specSnapshotSchema, JSON.parse(readFileSync(path, 'utf8')), path);
}

/** One DescribeInstanceTypes entry as Cello sees it; undefined for types it cannot use. */
export function specFromDescription(it: InstanceTypeInfo): TypeSpec | undefined {
  const name = it.InstanceType;
  const vcpus = it.VCpuInfo?.DefaultVCpus;
  const mem = it.MemoryInfo?.SizeInMiB;
  if (!name || !vcpus || !mem) return undefined;
  const archs = it.ProcessorInfo?.SupportedArchitectures ?? [];
  const arch = archs.includes('x86_64') ? 'amd64' : archs.includes('arm64') ? 'arm64' : undefined;
  if (!arch) return undefined;
  const gpus = (it.GpuInfo?.Gpus ?? []).reduce((n, g) => n + (g.Count ?? 0), 0);
  const gpu0 = it.GpuInfo?.Gpus?.[0];
  const [family, size] = name.split('.') as [string, string];
  let baseline: number | undefined;
  if (it.BurstablePerformanceSupported) {
    baseline = (family === 't2' ? T2_BASELINE : BURST_BASELINE)[size ?? ''];
  }
  return {
    name,
    vcpus,
    memoryMiB: mem,
    gpus,
    ...(gpu0?.Name ? { gpuType: `${gpu0.Manufacturer ? `${gpu0.Manufacturer.toLowerCase()}-` : ''}${gpu0.Name.toLowerCase()}` } : {}),
    ...(baseline !== undefined ? { baselineCpuFraction: baseline } : {}),
    arch,
  };
}

/**
 * Every instance type in the region (or those matching `globs`, which EC2's instance-type
 * filter understands: far fewer pages than the ~1,000 types of a region), paginated.
 */
export async function describeAllTypes(ec2: EC2Client, globs?: string[]): Promise<TypeSpec[]> {
  const out: TypeSpec[] = [];
  let token: string | undefined;
  do {
    const r = await ec2.send(
      new DescribeInstanceTypesCommand({
        MaxResults: 100,
        NextToken: token,
        ...(globs ? { Filters: [{ Name: 'instance-type', Values: globs }] } : {}),
      }),
    );
    for (const it of r.InstanceTypes ?? []) {
      const s = specFromDescription(it);
      if (s) out.push(s);
    }
    token = r.NextToken;
  } while (token);
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

function globToRegExp(glob: string): RegExp {
  return new RegExp(
    `^${glob
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
}

/** Joins specs with prices; types without an on-demand price, or outside `allow` globs, are left out. */
export function priceSpecs(specs: TypeSpec[], prices: Prices, allow?: string[]): InstanceType[] {
  const res = allow?.map(globToRegExp);
  const out: InstanceType[] = [];
  for (const s of specs) {
    if (res && !res.some((r) => r.test(s.name))) continue;
    const od = prices.onDemandHourly[s.name];
    if (od === undefined) continue;
    const spot = prices.spotHourly[s.name] ?? (prices.spotEstimateFactor !== undefined ? Math.round(od * prices.spotEstimateFactor * 1e6) / 1e6 : undefined);
    out.push({ ...s, onDemandHourlyUsd: od, ...(spot !== undefined ? { spotHourlyUsd: spot } : {}) });
  }
  return out;
}

/**
 * Reads specs live once (DescribeInstanceTypes is slow and rate-limited; types do not change
 * within a controller's life) and falls back to the snapshot when the live read fails.
 */
export class AwsCatalog {
  private cached: Promise<{ specs: TypeSpec[]; origin: 'live' | 'snapshot' }> | undefined;
  constructor(
    private readonly ec2: EC2Client,
    private readonly opts: { live: boolean; prices: Prices; allow?: string[]; onLiveError?: (err: unknown) => void },
  ) {}

  async specs(): Promise<{ specs: TypeSpec[]; origin: 'live' | 'snapshot' }> {
    this.cached ??= (async () => {
      if (this.opts.live) {
        try {
          return { specs: await describeAllTypes(this.ec2, this.opts.allow), origin: 'live' as const };
        } catch (err) {
          this.opts.onLiveError?.(err);
        }
      }
      return { specs: loadSpecSnapshot().types, origin: 'snapshot' as const };
    })();
    return this.cached;
  }

  /**
   * The spec of one type, for launch: from the catalog when it is loaded, else one small
   * DescribeInstanceTypes (launch must not wait for the whole region's list). Undefined when
   * the region does not offer the type.
   */
  async spec(name: string): Promise<TypeSpec | undefined> {
    const hit = this.one.get(name);
    if (hit) return hit;
    const p = (async () => {
      if (this.cached) {
        const all = await this.cached;
        const s = all.specs.find((x) => x.name === name);
        if (s || all.origin === 'live') return s;
      }
      if (!this.opts.live) return loadSpecSnapshot().types.find((x) => x.name === name);
      try {
        const r = await this.ec2.send(new DescribeInstanceTypesCommand({ InstanceTypes: [name as never] }));
        const it = r.InstanceTypes?.[0];
        return it ? specFromDescription(it) : undefined;
      } catch (err) {
        if ((err as { name?: string }).name === 'InvalidInstanceType') return undefined;
        // No API: the snapshot still knows the shape of the type.
        const snap = loadSpecSnapshot().types.find((x) => x.name === name);
        if (snap) return snap;
        throw err;
      }
    })();
    this.one.set(name, p);
    p.catch(() => this.one.delete(name));
    return p;
  }
  private readonly one = new Map<string, Promise<TypeSpec | undefined>>();

  async types(): Promise<InstanceType[]> {
    return priceSpecs((await this.specs()).specs, this.opts.prices, this.opts.allow);
  }
}
