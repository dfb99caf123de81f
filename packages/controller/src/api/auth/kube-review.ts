// In a cluster, the API server decides: bearer tokens are authenticated with a TokenReview and
// pod requests authorized with a SubjectAccessReview on pods and their subresources (pods/exec,
// pods/attach, pods/log, pods/portforward), exactly what the API server itself would check for
// kubectl. The reviews and their caches are k8s/client/reviews.ts, shared with the kubelet API.
import { AccessReviewer, TokenReviewer as KubeTokenReviewer, type ReviewOptions } from '../../k8s/client/reviews.js';
import type { Attributes, Authorizer, Decision, Principal } from './policy.js';

export type { ReviewOptions };

export class TokenReviewer {
  private readonly reviewer: KubeTokenReviewer;
  constructor(o: ReviewOptions) {
    this.reviewer = new KubeTokenReviewer(o);
  }

  /** The user a bearer token belongs to, or undefined when the API server does not accept it. */
  async review(token: string): Promise<Principal | undefined> {
    const user = await this.reviewer.review(token);
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
  private readonly reviewer: AccessReviewer;
  constructor(o: ReviewOptions) {
    this.reviewer = new AccessReviewer(o);
  }

  async authorize(p: Principal, a: Attributes): Promise<Decision> {
    // Cells have no Kubernetes resource: only api.policy speaks for them.
    if (a.resource === 'cells') return { allowed: false, reason: 'cells are not Kubernetes resources (SubjectAccessReview does not apply)' };
    const k = kubeAttributes(a)!;
    const d = await this.reviewer.review(
      { username: p.user, groups: p.groups },
      {
        ...(a.namespace !== '*' ? { namespace: a.namespace } : {}),
        verb: k.verb,
        resource: a.resource,
        ...(k.subresource ? { subresource: k.subresource } : {}),
        ...(a.name ? { name: a.name } : {}),
      },
    );
    return d.allowed ? { allowed: true } : { allowed: false, reason: `SubjectAccessReview: ${d.reason || 'not allowed by RBAC'}` };
  }
}
