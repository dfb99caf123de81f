// Instance catalogs are data files (specs + prices) that record where the figures came from and
// when, so a price used by selection can always be traced. Providers load theirs with
// loadCatalog(); selection only sees InstanceType[].
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { InstanceType } from '../providers/provider.js';
import localJson from './local.json' with { type: 'json' };

const instanceTypeSchema = z.object({
  name: z.string().min(1),
  vcpus: z.number().positive(),
  memoryMiB: z.number().positive(),
  gpus: z.number().int().nonnegative(),
  gpuType: z.string().optional(),
  baselineCpuFraction: z.number().gt(0).lte(1).optional(),
  onDemandHourlyUsd: z.number().nonnegative(),
  spotHourlyUsd: z.number().nonnegative().optional(),
  arch: z.enum(['amd64', 'arm64']),
});

export const catalogSchema = z.object({
  provider: z.string().min(1),
  source: z.string().min(1),
  retrievedAt: z.string().min(1),
  types: z.array(instanceTypeSchema).min(1),
});

export type Catalog = z.infer<typeof catalogSchema>;

export function parseCatalog(data: unknown, origin: string): Catalog {
  const r = catalogSchema.safeParse(data);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new Error(`catalog ${origin}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return r.data;
}

export function loadCatalog(path: string): Catalog {
  return parseCatalog(JSON.parse(readFileSync(path, 'utf8')), path);
}

/** The catalog of the local provider, shipped with the package. */
export function localCatalog(): Catalog {
  return parseCatalog(localJson, 'catalog/local.json');
}

export function catalogTypes(c: Catalog): InstanceType[] {
  return c.types.map((t) => ({ ...t }));
}
