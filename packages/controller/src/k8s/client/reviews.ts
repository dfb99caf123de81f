// The API server as the judge of callers it knows: a TokenReview says who a bearer token belongs
// to, a SubjectAccessReview whether RBAC lets a user do something. The kubelet API (nodes/*)
// and the controller API in a cluster (pods and their subresources) both ask through here.
// Answers are cached briefly, positive longer than negative, as the kubelet's webhook
// authenticator and authorizer do, so a stream of calls does not cost a review each.
import { createHash } from 'node:crypto';
import type { KubeRest } from './rest.js';

export interface UserInfo {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface ResourceAttributes {
  namespace?: string;
  verb: string;
  resource: string;
  subresource?: string;
  name?: string;
}

export interface AccessDecision {
  allowed: boolean;
  /** The authorizer's reason, '' when it gave none. */
  reason: string;
}

export interface ReviewOptions {
  rest: KubeRest;
  /** How long an accepted token or an allowed decision is reused. Default 2 minutes. */
  ttlMs?: number;
  /** ... a refused one. Default 30 s. */
  negativeTtlMs?: number;
}

/**
 * Entries each cache keeps. Bearer tokens are the caller's to choose, so without a bound a
 * stream of made-up tokens would grow the token cache (one refusal each, kept 30 s) forever.
 */
export const CACHE_ENTRIES = 4096;

/** A TTL cache that drops its oldest entries (Maps iterate in insertion order) once full. */
class BoundedCache<V> {
  private readonly m = new Map<string, { v: V; until: number }>();

  get size(): number {
    return this.m.size;
  }

  get(k: string): V | undefined {
    const hit = this.m.get(k);
    if (!hit) return undefined;
    if (hit.until > Date.now()) return hit.v;
    this.m.delete(k);
    return undefined;
  }

  set(k: string, v: V, ttlMs: number): void {
    this.m.delete(k);
    while (this.m.size >= CACHE_ENTRIES) this.m.delete(this.m.keys().next().value!);
    this.m.set(k, { v, until: Date.now() + ttlMs });
  }
}

export class TokenReviewer {
  private readonly cache = new BoundedCache<UserInfo | null>();
  constructor(private readonly o: ReviewOptions) {}

  get cached(): number {
    return this.cache.size;
  }

  /** The user a bearer token belongs to, or undefined when the API server does not accept it. */
  async review(token: string): Promise<UserInfo | undefined> {
    // Keyed by a hash: the cache never holds a usable token.
    const key = createHash('sha256').update(token).digest('hex');
    let user = this.cache.get(key);
    if (user === undefined) {
      const r = await this.o.rest.post<{ status?: { authenticated?: boolean; user?: UserInfo } }>('/apis/authentication.k8s.io/v1/tokenreviews', {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenReview',
        spec: { token },
      });
      user = r.status?.authenticated && r.status.user?.username ? r.status.user : null;
      this.cache.set(key, user, user ? (this.o.ttlMs ?? 120_000) : (this.o.negativeTtlMs ?? 30_000));
    }
    return user ?? undefined;
  }
}

export class AccessReviewer {
  private readonly cache = new BoundedCache<AccessDecision>();
  constructor(private readonly o: ReviewOptions) {}

  get cached(): number {
    return this.cache.size;
  }

  async review(user: UserInfo, resourceAttributes: ResourceAttributes): Promise<AccessDecision> {
    const key = JSON.stringify([user.username, user.uid, user.groups, user.extra, resourceAttributes]);
    const hit = this.cache.get(key);
    if (hit) return hit;
    const r = await this.o.rest.post<{ status?: { allowed?: boolean; reason?: string } }>('/apis/authorization.k8s.io/v1/subjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: {
        user: user.username,
        ...(user.uid ? { uid: user.uid } : {}),
        groups: user.groups ?? [],
        ...(user.extra ? { extra: user.extra } : {}),
        resourceAttributes,
      },
    });
    const d: AccessDecision = { allowed: !!r.status?.allowed, reason: r.status?.reason ?? '' };
    this.cache.set(key, d, d.allowed ? (this.o.ttlMs ?? 120_000) : (this.o.negativeTtlMs ?? 30_000));
    return d;
  }
}
