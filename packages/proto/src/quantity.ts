// Kubernetes resource quantities ("250m", "1.5", "64Mi", "1e3", "2G") as integers.
// https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
import { CelloError } from './errors.js';

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

const QUANTITY = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$/;

export class QuantityError extends CelloError {
  constructor(readonly input: string) {
    super('InvalidArgument', `invalid quantity "${input}": expected a number with an optional suffix such as 250m, 1.5, 64Mi or 2G`);
  }
}

/** The quantity as a plain number (1.5 for "1500m", 67108864 for "64Mi"). */
export function parseQuantity(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input)) throw new QuantityError(String(input));
    return input;
  }
  const m = QUANTITY.exec(input.trim());
  if (!m) throw new QuantityError(input);
  const base = Number(m[1]);
  if (m[2]) return base * 10 ** Number(m[2].slice(1));
  const suffix = m[3] ?? '';
  return base * (BINARY[suffix] ?? DECIMAL[suffix]!);
}

/** CPU in millicores, rounded up as Kubernetes does ("100m" → 100, "0.5" → 500, 2 → 2000). */
export function parseCpuMillis(input: string | number): number {
  const v = parseQuantity(input);
  if (v < 0) throw new QuantityError(String(input));
  return Math.ceil(Math.round(v * 1e9) / 1e6);
}

/** Bytes, rounded up ("64Mi" → 67108864, "1G" → 1e9, "500m" → 1). */
export function parseBytes(input: string | number): number {
  const v = parseQuantity(input);
  if (v < 0) throw new QuantityError(String(input));
  return Math.ceil(v - 1e-9);
}

/** A count, for extended resources such as nvidia.com/gpu: must be a whole number. */
export function parseCount(input: string | number): number {
  const v = parseQuantity(input);
  if (v < 0 || !Number.isInteger(v)) throw new QuantityError(String(input));
  return v;
}

/** Renders millicores the way Kubernetes prints them: "250m", or "2" for whole cores. */
export function formatCpuMillis(millis: number): string {
  return millis % 1000 === 0 ? String(millis / 1000) : `${millis}m`;
}

/** Renders bytes with the largest exact binary suffix: 67108864 → "64Mi". */
export function formatBytes(bytes: number): string {
  for (const s of ['Ei', 'Pi', 'Ti', 'Gi', 'Mi', 'Ki'] as const) {
    const unit = BINARY[s]!;
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit}${s}`;
  }
  return String(bytes);
}
