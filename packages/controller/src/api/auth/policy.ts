// Who may do what through the controller API: a small declarative policy in the controller's
// configuration (api.policy). A rule names subjects (users and/or groups), namespaces ('*' =
// all, and the only way to reach cluster-scoped things: cells, every namespace's events) and
// verbs ('*' = all). A call is allowed when any rule matches; group system:masters is always
// allowed, as in Kubernetes, so the controller's own components never depend on the policy
// being written right.
import { z } from 'zod';

export const VERBS = ['get', 'list', 'watch', 'create', 'delete', 'exec', 'attach', 'portforward', 'logs'] as const;
export type Verb = (typeof VERBS)[number];
/** metrics: cellctl top; audit: the exec/attach/port-forward sessions; support: cellctl dump (cluster-wide). */
export type Resource = 'pods' | 'cells' | 'events' | 'metrics' | 'audit' | 'support';

/** Group whose members may do everything (the local admin, the virtual node). */
export const MASTERS_GROUP = 'system:masters';
/** The caller of a plaintext API (api.insecure), which has no credentials to show. */
export const ANONYMOUS = { user: 'system:anonymous', groups: ['system:unauthenticated'] } as const;

export const policyRuleSchema = z
  .strictObject({
    users: z.array(z.string().min(1)).default([]),
    groups: z.array(z.string().min(1)).default([]),
    namespaces: z.array(z.string().min(1)).min(1),
    verbs: z.array(z.enum([...VERBS, '*'])).min(1),
    /** Default all: pods, their events, metrics and audit, and (with namespaces ['*']) cells and the support bundle. */
    resources: z.array(z.enum(['pods', 'cells', 'events', 'metrics', 'audit', 'support', '*'])).default(['*']),
  })
  .refine((r) => r.users.length + r.groups.length > 0, { message: 'a rule needs at least one of users or groups' });

export const policySchema = z.array(policyRuleSchema).default([]);
export type PolicyRule = z.infer<typeof policyRuleSchema>;

export interface Principal {
  user: string;
  groups: string[];
  /** How the caller proved who it is. */
  via: 'certificate' | 'token' | 'insecure';
}

export interface Attributes {
  verb: Verb;
  resource: Resource;
  /** The namespace acted on; '*' for a request across every namespace or a cluster-scoped one. */
  namespace: string;
  /** The pod, when the request names one (for SubjectAccessReview). */
  name?: string;
}

export type Decision = { allowed: true } | { allowed: false; reason: string };

export interface Authorizer {
  authorize(p: Principal, a: Attributes): Promise<Decision>;
}

export class PolicyAuthorizer implements Authorizer {
  constructor(private readonly rules: readonly PolicyRule[]) {}

  async authorize(p: Principal, a: Attributes): Promise<Decision> {
    if (p.groups.includes(MASTERS_GROUP)) return { allowed: true };
    for (const r of this.rules) {
      const subject = r.users.includes(p.user) || r.groups.some((g) => p.groups.includes(g));
      const verb = r.verbs.includes('*') || r.verbs.includes(a.verb);
      const resource = r.resources.includes('*') || r.resources.includes(a.resource);
      // Cluster-scoped and all-namespace requests need a rule over every namespace.
      const ns = r.namespaces.includes('*') || (a.namespace !== '*' && a.resource !== 'cells' && a.resource !== 'support' && r.namespaces.includes(a.namespace));
      if (subject && verb && resource && ns) return { allowed: true };
    }
    return { allowed: false, reason: 'no api.policy rule allows it' };
  }
}

/** Allowed when any of the authorizers allows (Kubernetes' authorizer chain). */
export class AnyOf implements Authorizer {
  constructor(private readonly list: Authorizer[]) {}

  async authorize(p: Principal, a: Attributes): Promise<Decision> {
    const reasons: string[] = [];
    for (const z of this.list) {
      const d = await z.authorize(p, a);
      if (d.allowed) return d;
      reasons.push(d.reason);
    }
    return { allowed: false, reason: reasons.filter(Boolean).join('; ') };
  }
}
