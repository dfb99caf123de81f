// The streaming server's single-use tokens, as the kubelet's streaming server keeps them
// (k8s.io/kubelet/pkg/cri/streaming/request_cache.go): Exec/Attach/PortForward cache the request
// under a random token and return a URL holding it; the URL is the credential. A token is
// consumed by its first use, whatever the outcome; it expires after `ttlMs` (the kubelet's one
// minute); at most `maxInFlight` wait at once (the kubelet's 1000), beyond which a new request is
// refused (RESOURCE_EXHAUSTED) rather than an old one dropped.
import { randomBytes } from 'node:crypto';
import { CelloError } from '@cello/proto';

export const TOKEN_TTL_MS = 60_000;
export const MAX_IN_FLIGHT = 1000;

interface Entry<T> {
  value: T;
  expires: number;
}

export class TokenCache<T> {
  /** Insertion order is expiry order (one TTL for all), so the oldest are first. */
  private readonly entries = new Map<string, Entry<T>>();

  constructor(
    private readonly ttlMs = TOKEN_TTL_MS,
    private readonly maxInFlight = MAX_IN_FLIGHT,
    private readonly now: () => number = Date.now,
  ) {}

  private gc(): void {
    const t = this.now();
    for (const [token, e] of this.entries) {
      if (e.expires > t) break;
      this.entries.delete(token);
    }
  }

  /** A new token for `value`. 32 random bytes (the kubelet uses 8 characters): guessing one is not an option. */
  insert(value: T): string {
    this.gc();
    if (this.entries.size >= this.maxInFlight) {
      throw new CelloError(
        'ResourceExhausted',
        `maximum number of in-flight streaming requests (${this.maxInFlight}) exceeded; each URL is valid for ${this.ttlMs / 1000}s or until used`,
      );
    }
    const token = randomBytes(32).toString('base64url');
    this.entries.set(token, { value, expires: this.now() + this.ttlMs });
    return token;
  }

  /** The request a token stands for, removing it: undefined when unknown, used or expired. */
  consume(token: string): T | undefined {
    const e = this.entries.get(token);
    if (!e) return undefined;
    this.entries.delete(token);
    return e.expires > this.now() ? e.value : undefined;
  }

  get size(): number {
    this.gc();
    return this.entries.size;
  }
}
