// Who may call the kubelet API, as a kubelet in webhook mode decides it. Authentication: a
// client certificate signed by the configured CA (user from its CN, groups from its O values,
// as the API server's x509 authenticator reads them), or a bearer token checked with a
// TokenReview. Authorization, for both: a SubjectAccessReview on the node's subresource
// (nodes/stats, nodes/metrics, nodes/log, nodes/proxy), cached briefly as the kubelet's webhook
// authorizer does. A certificate is only proof of who the caller is: any client certificate
// the cluster CA signed (every kubelet's, every user's kubeconfig) would otherwise exec into
// every pod on this node.
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { KubeRest } from './rest.js';

export type AuthResult = { ok: true; user: string } | { ok: false; code: 401 | 403; message: string };

interface UserInfo {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

/** The kubelet's verbs (server/auth.go): methods it does not list get none, which RBAC never grants. */
const VERBS: Record<string, string> = { GET: 'get', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' };

/** Every authenticated user is in this group, as the API server's authenticator chain adds it. */
const AUTHENTICATED = 'system:authenticated';

/**
 * Entries each cache keeps. Bearer tokens are the caller's to choose, so without a bound a
 * stream of made-up tokens would grow the token cache (one refusal each, kept 30 s) forever.
 */
export const CACHE_ENTRIES = 4096;

/** Map.set that first drops the oldest entries (Maps iterate in insertion order) once full. */
function setBounded<K, V>(m: Map<K, V>, k: K, v: V): void {
  m.delete(k);
  while (m.size >= CACHE_ENTRIES) m.delete(m.keys().next().value as K);
  m.set(k, v);
}

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
  private readonly tokens = new Map<string, { user?: UserInfo; until: number }>();
  private readonly decisions = new Map<string, { allowed: boolean; reason: string; until: number }>();

  constructor(
    private readonly o: { nodeName: string; allowedCNs?: string[]; rest?: KubeRest; ttlMs?: number },
  ) {}

  /** Entries in the token and decision caches (each at most CACHE_ENTRIES). */
  cacheSizes(): { tokens: number; decisions: number } {
    return { tokens: this.tokens.size, decisions: this.decisions.size };
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
      if (!m || !this.o.rest) return { ok: false, code: 401, message: 'Unauthorized: present a client certificate signed by the kubelet client CA, or a bearer token' };
      user = await this.authenticate(m[1]!);
      if (!user) return { ok: false, code: 401, message: 'Unauthorized: the bearer token was not accepted by the API server (TokenReview)' };
      how = 'bearer token';
    }
    const path = new URL(req.url ?? '/', 'https://kubelet').pathname;
    const verb = VERBS[req.method ?? 'GET'];
    const sub = subresourceOf(path);
    const attrs = `user=${user.username}, groups=[${(user.groups ?? []).join(', ')}], verb=${verb ?? req.method}, resource=nodes, subresource=${sub}, name=${this.o.nodeName}`;
    if (!verb) return { ok: false, code: 403, message: `Forbidden (${attrs}): method ${req.method} maps to no verb` };
    if (!this.o.rest) {
      // Nothing to ask: only a certificate the operator named explicitly is trusted.
      if (cert && this.o.allowedCNs?.includes(user.username)) return { ok: true, user: user.username };
      return { ok: false, code: 403, message: `Forbidden (${attrs}): this kubelet has no API server to authorize the ${how} with (SubjectAccessReview)` };
    }
    const d = await this.authorize(user, verb, sub);
    if (!d.allowed) return { ok: false, code: 403, message: `Forbidden (${attrs}): ${d.reason || 'no RBAC rule allows it'}` };
    return { ok: true, user: user.username };
  }

  private async authenticate(token: string): Promise<UserInfo | undefined> {
    const key = createHash('sha256').update(token).digest('hex');
    const hit = this.tokens.get(key);
    if (hit && hit.until > Date.now()) return hit.user;
    const r = await this.o.rest!.post<{ status: { authenticated?: boolean; user?: UserInfo } }>('/apis/authentication.k8s.io/v1/tokenreviews', {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token },
    });
    const user = r.status.authenticated ? r.status.user : undefined;
    setBounded(this.tokens, key, { ...(user ? { user } : {}), until: Date.now() + (user ? (this.o.ttlMs ?? 120_000) : 30_000) });
    return user;
  }

  private async authorize(user: UserInfo, verb: string, subresource: string): Promise<{ allowed: boolean; reason: string }> {
    const key = JSON.stringify([user.username, user.groups, verb, subresource]);
    const hit = this.decisions.get(key);
    if (hit && hit.until > Date.now()) return hit;
    const r = await this.o.rest!.post<{ status: { allowed?: boolean; reason?: string } }>('/apis/authorization.k8s.io/v1/subjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: {
        user: user.username,
        ...(user.uid ? { uid: user.uid } : {}),
        groups: user.groups ?? [],
        ...(user.extra ? { extra: user.extra } : {}),
        resourceAttributes: { verb, resource: 'nodes', subresource, name: this.o.nodeName },
      },
    });
    const d = { allowed: !!r.status.allowed, reason: r.status.reason ?? '', until: Date.now() + (r.status.allowed ? (this.o.ttlMs ?? 300_000) : 30_000) };
    setBounded(this.decisions, key, d);
    return d;
  }
}
