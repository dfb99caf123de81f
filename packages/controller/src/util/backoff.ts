// The one exponential back-off of the controller: the work queues' per-key retries, the
// Kubernetes informer and pod watch, the etcd watch and the cell bootstrap all wait by it.
// Each caller keeps its own base and cap (they differ for reasons given at the call site).

export interface BackoffPolicy {
  /** The first delay. */
  baseMs: number;
  /** No delay is longer than this. */
  maxMs: number;
  /** Growth per attempt (2: doubling). */
  factor?: number;
  /**
   * Fraction of each delay taken off at random (0: none, 1: "full jitter"), so that many
   * clients failing together do not retry together. Off unless asked for.
   */
  jitter?: number;
}

/** The delay before retry number `attempt` (1 is the first retry). */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const n = Math.max(1, attempt);
  // factor ** large n is Infinity, which the cap absorbs.
  const delay = Math.min(policy.baseMs * (policy.factor ?? 2) ** (n - 1), policy.maxMs);
  const jitter = Math.min(1, Math.max(0, policy.jitter ?? 0));
  return jitter > 0 ? delay * (1 - jitter * random()) : delay;
}

/** Back-off state for one thing being retried: `next()` after each failure, `reset()` after a success. */
export class Backoff {
  private attempt = 0;

  constructor(
    readonly policy: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {}

  /** Failures since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  next(): number {
    this.attempt++;
    return backoffDelay(this.policy, this.attempt, this.random);
  }

  reset(): void {
    this.attempt = 0;
  }
}
