// In a cluster, the API server decides: bearer tokens are authenticated with a TokenReview and
// pod requests authorized with a SubjectAccessReview on pods and their subresources (pods/exec,
// pods/attach, pods/log, pods/portforward), exactly what the API server itself would check for
// kubectl. Answers are cached briefly (positive longer than negative), as the kubelet's webhook
// authenticator and authorizer do, so a stream of calls does not cost a review each.
import { createHash } from 'node:crypto';
import type { KubeRest } from '../../k8s/rest.js';
import type { Attributes, Authorizer, Decision, Principal } from './policy.js';

interface UserInfo {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface ReviewOptions {
  rest: KubeRest;
  /** How long an accepted token or an allowed decision is reused. Default 2 minutes. */
  ttlMs?: number;
  /** ... a refused one. Default 30 s. */
  negativeTtlMs?: number;
}

/** A bounded cache: the oldest entries go first once it is full (tokens are attacker-chosen). */
class Cache<V> {
  private readonly m = new Map<string, { v: V; until: number }>();
  constructor(private readonly max = 4096) {}
  get(k: string): V | undefined {
    const hit = this.m.get(k);
    if (!hit) return undefined;
    if (hit.until > Date.now()) return hit.v;
    this.m.delete(k);
    return undefined;
  }
  set(k: string, v: V, ttlMs: number): void {
    if (this.m.size >= this.max) this.m.delete(this.m.keys().next().value!);
    this.m.set(k, { v, until: Date.now() + ttlMs });
  }
}

export class TokenReviewer {
  private readonly cache = new Cache<UserInfo | null>();
  constructor(private readonly o: ReviewOptions) {}

  /** The user a bearer token belongs to, or undefined when the API server does not accept it. */
  async review(token: string): Promise<Principal | undefined> {
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
    return user ? { user: user.username, groups: user.groups ?? [], via: 'token' } : undefined;
  }
}

/** The API server's verb and subresource for each API verb on pods. */
function kubeAttributes(a: Attributes): { verb: string; subresource?: string } | undefined {
  switch (a.verb) {
    case 'exec':
      return { verb: 'create', subresource: 'exec' };
    case 'attach':
      return { verb: 'create', subresource: 'attach' };
    case 'portforward':
      return { verb: 'create', subresource: 'portforward' };
    case 'logs':
      return { verb: 'get', subresource: 'log' };
    default:
      return { verb: a.verb };
  }
}

export class SubjectAccessReviewer implements Authorizer {
  private readonly cache = new Cache<Decision>();
  constructor(private readonly o: ReviewOptions) {}

  async authorize(p: Principal, a: Attributes): Promise<Decision> {
    // Cells have no Kubernetes resource: only api.policy speaks for them.
    if (a.resource === 'cells') return { allowed: false, reason: 'cells are not Kubernetes resources (SubjectAccessReview does not apply)' };
    const k = kubeAttributes(a)!;
    const resourceAttributes = {
      ...(a.namespace !== '*' ? { namespace: a.namespace } : {}),
      verb: k.verb,
      resource: a.resource,
      ...(k.subresource ? { subresource: k.subresource } : {}),
      ...(a.name ? { name: a.name } : {}),
    };
    const key = JSON.stringify([p.user, p.groups, resourceAttributes]);
    const hit = this.cache.get(key);
    if (hit) return hit;
    const r = await this.o.rest.post<{ status?: { allowed?: boolean; reason?: string } }>('/apis/authorization.k8s.io/v1/subjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: { user: p.user, groups: p.groups, resourceAttributes },
    });
    const d: Decision = r.status?.allowed ? { allowed: true } : { allowed: false, reason: `SubjectAccessReview: ${r.status?.reason || 'not allowed by RBAC'}` };
    this.cache.set(key, d, d.allowed ? (this.o.ttlMs ?? 120_000) : (this.o.negativeTtlMs ?? 30_000));
    return d;
  }
}
