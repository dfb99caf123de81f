// Kubernetes' crash-loop back-off: the first restart is immediate, then 10 s doubling up to
// 5 min; a unit that ran for 10 min without failing starts over. Injectable so tests do not
// wait 10 s per crash.
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
  resetAfterMs: number;
}

export const KUBERNETES_BACKOFF: BackoffPolicy = { baseMs: 10_000, maxMs: 300_000, resetAfterMs: 600_000 };

export class Backoff {
  private current = 0; // 0: the next restart is immediate

  constructor(private readonly policy: BackoffPolicy) {}

  /** Delay before the restart after an exit of an instance that ran for `ranMs`. */
  next(ranMs: number): number {
    if (ranMs >= this.policy.resetAfterMs) this.current = 0;
    const delay = this.current;
    this.current = this.current === 0 ? this.policy.baseMs : Math.min(this.policy.maxMs, this.current * 2);
    return delay;
  }

  reset(): void {
    this.current = 0;
  }
}

/** Waits `ms`, or less if `signal` aborts first; never rejects (the caller checks the signal). */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}
