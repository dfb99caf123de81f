// Capacity bookkeeping: EC2 answers "no capacity" per (instance type, availability zone), often
// for minutes. Remembering those pairs for a while keeps the controller from hammering a zone
// that just said no, and lets launch move on to the next zone, then the next type.

/** EC2 error codes that mean "this type cannot run here now": try another zone or type. */
const CAPACITY_CODES = new Set([
  'InsufficientInstanceCapacity',
  'InsufficientCapacity',
  'InsufficientHostCapacity',
  'InsufficientReservedInstanceCapacity',
  'Unsupported', // the type is not offered in this zone
  'InstanceTypeNotSupported',
]);

/** Spot-only capacity refusals: on-demand may still work. */
const SPOT_CODES = new Set(['SpotMaxPriceTooLow', 'MaxSpotInstanceCountExceeded', 'InsufficientSpotCapacity', 'SpotCapacityNotAvailable']);

export function errorCode(err: unknown): string | undefined {
  if (err && typeof err === 'object') {
    const e = err as { name?: unknown; Code?: unknown; code?: unknown };
    for (const v of [e.Code, e.code, e.name]) if (typeof v === 'string' && v !== 'Error') return v;
  }
  return undefined;
}

export function isCapacityError(err: unknown): boolean {
  const c = errorCode(err);
  return c !== undefined && CAPACITY_CODES.has(c);
}

export function isSpotCapacityError(err: unknown): boolean {
  const c = errorCode(err);
  return c !== undefined && SPOT_CODES.has(c);
}

export class UnavailablePairs {
  private readonly until = new Map<string, number>();
  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  private key(type: string, zone: string, spot: boolean): string {
    return `${type}|${zone}|${spot ? 'spot' : 'od'}`;
  }

  mark(type: string, zone: string, spot: boolean): void {
    if (this.ttlMs > 0) this.until.set(this.key(type, zone, spot), this.now() + this.ttlMs);
  }

  isUnavailable(type: string, zone: string, spot: boolean): boolean {
    const k = this.key(type, zone, spot);
    const t = this.until.get(k);
    if (t === undefined) return false;
    if (t <= this.now()) {
      this.until.delete(k);
      return false;
    }
    return true;
  }
}
