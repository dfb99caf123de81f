// A nanosecond wall clock. Date.now() has millisecond resolution, which would give thousands of
// log lines the same timestamp; anchoring process.hrtime to the wall clock once keeps order and
// precision. It never goes backwards, even if the system clock is stepped.
import { performance } from 'node:perf_hooks';

// performance.timeOrigin + now() is the wall clock with sub-millisecond precision.
const anchor = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)) - process.hrtime.bigint();
let last = 0n;

export function nowNs(): bigint {
  let t = anchor + process.hrtime.bigint();
  if (t < last) t = last;
  last = t;
  return t;
}

export interface SplitTime {
  seconds: number;
  nanos: number;
}

export function splitNs(t: bigint): SplitTime {
  return { seconds: Number(t / 1_000_000_000n), nanos: Number(t % 1_000_000_000n) };
}

let cachedSecond = -1;
let cachedPrefix = '';

/** RFC 3339 with exactly nine fractional digits, as CRI log files carry it. */
export function formatRfc3339Nano(seconds: number, nanos: number): string {
  if (seconds !== cachedSecond) {
    cachedSecond = seconds;
    cachedPrefix = new Date(seconds * 1000).toISOString().slice(0, 19);
  }
  return `${cachedPrefix}.${String(nanos).padStart(9, '0')}Z`;
}
