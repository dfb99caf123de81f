// Who may call the kubelet API, as a kubelet in webhook mode decides it. Authentication: a
// client certificate signed by the configured CA (user from its CN, groups from its O values,
// as the API server's x509 authenticator reads them), or a bearer token checked with a
// TokenReview. Authorization, for both: a SubjectAccessReview on the node's subresource
// (nodes/stats, nodes/metrics, nodes/log, nodes/proxy), cached briefly as the kubelet's webhook
// authorizer does. A certificate is only proof of who the caller is: any client certificate
// the cluster CA signed (every kubelet's, every user's kubeconfig) would otherwise exec into
// every pod on this node.
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { KubeRest } from '../client/rest.js';
import { AccessReviewer, TokenReviewer, type UserInfo } from '../client/reviews.js';

export { CACHE_ENTRIES } from '../client/reviews.js';

export type AuthResult = { ok: true; user: string } | { ok: false; code: 401 | 403; message: string };

/** The kubelet's verbs (server/auth.go): methods it does not list get none, which RBAC never grants. */
const VERBS: Record<string, string> = { GET: 'get', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' };

/** The kubelet's streaming endpoints. */
const STREAMING = new Set(['exec', 'attach', 'portForward']);

/** Every authenticated user is in this group, as the API server's authenticator chain adds it. */
const AUTHENTICATED = 'system:authenticated';

/** `path` is `prefix` or below it: /stats and /stats/summary, not /statsfoo (the kubelet's isSubpath). */
function isSubpath(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`);
}

/** The kubelet's mapping of paths to node subresources; exec, attach, portForward, containerLogs and pods are `proxy`. */
export function subresourceOf(path: string): string {
  if (isSubpath(path, '/stats')) return 'stats';
  if (isSubpath(path, '/metrics')) return 'metrics';
  if (isSubpath(path, '/logs')) return 'log';
  return 'proxy';
}

function certificateUser(sock: TLSSocket): UserInfo | { error: string } | undefined {
  if (!sock.authorized) return undefined;
  // A resumed TLS session reports `authorized` with no certificate at all: no certificate
  // user then, as Go's x509 authenticator acts only on certificates actually presented.
  const peer = sock.getPeerCertificate();
  if (!peer?.raw) return undefined;
  const subject = peer.subject;
  const list = (v: string | string[] | undefined) => (Array.isArray(v) ? v : v ? [v] : []);
  const cn = list(subject?.CN)[0];
  if (!cn) return { error: 'Unauthorized: the client certificate has no common name (CN) to name its user' };
  return { username: cn, groups: [...list(subject?.O), AUTHENTICATED] };
}

export class KubeletAuth {
  private readonly tokens?: TokenReviewer;
  private readonly access?: AccessReviewer;

  constructor(private readonly o: { nodeName: string; allowedCNs?: string[]; rest?: KubeRest; ttlMs?: number }) {
    if (o.rest) {
      this.tokens = new TokenReviewer({ rest: o.rest, ttlMs: o.ttlMs ?? 120_000 });
      this.access = new AccessReviewer({ rest: o.rest, ttlMs: o.ttlMs ?? 300_000 });
    }
  }

  /** Entries in the token and decision caches (each at most CACHE_ENTRIES). */
  cacheSizes(): { tokens: number; decisions: number } {
    return { tokens: this.tokens?.cached ?? 0, decisions: this.access?.cached ?? 0 };
  }

  async check(req: IncomingMessage): Promise<AuthResult> {
    let user: UserInfo | undefined;
    let how: string;
    const cert = certificateUser(req.socket as TLSSocket);
    if (cert && 'error' in cert) return { ok: false, code: 401, message: cert.error };
    if (cert) {
      const allowed = this.o.allowedCNs ?? [];
      // An extra restriction on top of RBAC, not a substitute for it.
      if (allowed.length && !allowed.includes(cert.username)) {
        return { ok: false, code: 403, message: `Forbidden: client certificate ${cert.username} is not one of kubernetes.kubelet.allowedCommonNames` };
      }
      user = cert;
      how = 'client certificate';
    } else {
      const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
      if (!m || !this.tokens) return { ok: false, code: 401, message: 'Unauthorized: present a client certificate signed by the kubelet client CA, or a bearer token' };
      user = await this.tokens.review(m[1]!);
      if (!user) return { ok: false, code: 401, message: 'Unauthorized: the bearer token was not accepted by the API server (TokenReview)' };
      how = 'bearer token';
    }
    const path = new URL(req.url ?? '/', 'https://kubelet').pathname;
    // A stream (exec, attach, port-forward) is `create` however it is opened: SPDY POSTs, a
    // WebSocket upgrade GETs, and `get` on nodes/proxy must not be enough to run a command.
    const verb = STREAMING.has(path.split('/')[1] ?? '') && req.headers.upgrade ? 'create' : VERBS[req.method ?? 'GET'];
    const sub = subresourceOf(path);
    const attrs = `user=${user.username}, groups=[${(user.groups ?? []).join(', ')}], verb=${verb ?? req.method}, resource=nodes, subresource=${sub}, name=${this.o.nodeName}`;
    if (!verb) return { ok: false, code: 403, message: `Forbidden (${attrs}): method ${req.method} maps to no verb` };
    if (!this.access) {
      // Nothing to ask: only a certificate the operator named explicitly is trusted.
      if (cert && this.o.allowedCNs?.includes(user.username)) return { ok: true, user: user.username };
      return { ok: false, code: 403, message: `Forbidden (${attrs}): this kubelet has no API server to authorize the ${how} with (SubjectAccessReview)` };
    }
    const d = await this.access.review(user, { verb, resource: 'nodes', subresource: sub, name: this.o.nodeName });
    if (!d.allowed) return { ok: false, code: 403, message: `Forbidden (${attrs}): ${d.reason || 'no RBAC rule allows it'}` };
    return { ok: true, user: user.username };
  }
}
