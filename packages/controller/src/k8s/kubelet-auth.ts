// Who may call the kubelet API, as a kubelet decides it: client certificates signed by the
// configured CA (the API server's kubelet client certificate) are trusted; bearer tokens (e.g.
// metrics-server's service account) are authenticated with a TokenReview and authorized with a
// SubjectAccessReview on the node's subresource (nodes/stats, nodes/metrics, nodes/log,
// nodes/proxy), both cached briefly as the kubelet's webhook authenticator/authorizer do.
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

const VERBS: Record<string, string> = { GET: 'get', HEAD: 'get', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' };

/** The kubelet's mapping of paths to node subresources. */
export function subresourceOf(path: string): string {
  if (path.startsWith('/stats')) return 'stats';
  if (path.startsWith('/metrics')) return 'metrics';
  if (path.startsWith('/logs')) return 'log';
  return 'proxy';
}

export class KubeletAuth {
  private readonly tokens = new Map<string, { user?: UserInfo; until: number }>();
  private readonly decisions = new Map<string, { allowed: boolean; reason: string; until: number }>();

  constructor(
    private readonly o: { nodeName: string; allowedCNs?: string[]; rest?: KubeRest; ttlMs?: number },
  ) {}

  async check(req: IncomingMessage): Promise<AuthResult> {
    const sock = req.socket as TLSSocket;
    if (sock.authorized) {
      const cn = sock.getPeerCertificate()?.subject?.CN;
      const name = Array.isArray(cn) ? cn[0] : cn;
      const allowed = this.o.allowedCNs ?? [];
      if (name && (!allowed.length || allowed.includes(name))) return { ok: true, user: name };
      if (name) return { ok: false, code: 403, message: `Forbidden: client certificate ${name} is not one of kubernetes.kubelet.allowedCommonNames` };
    }
    const auth = req.headers.authorization ?? '';
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    if (!m || !this.o.rest) return { ok: false, code: 401, message: 'Unauthorized: present a client certificate signed by the kubelet client CA, or a bearer token' };
    const user = await this.authenticate(m[1]!);
    if (!user) return { ok: false, code: 401, message: 'Unauthorized: the bearer token was not accepted by the API server (TokenReview)' };
    const path = new URL(req.url ?? '/', 'https://kubelet').pathname;
    const verb = VERBS[req.method ?? 'GET'] ?? 'get';
    const sub = subresourceOf(path);
    const d = await this.authorize(user, verb, sub);
    if (!d.allowed) return { ok: false, code: 403, message: `Forbidden: user=${user.username}, verb=${verb}, resource=nodes, subresource=${sub}${d.reason ? ` (${d.reason})` : ''}` };
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
    this.tokens.set(key, { ...(user ? { user } : {}), until: Date.now() + (user ? (this.o.ttlMs ?? 120_000) : 30_000) });
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
    this.decisions.set(key, d);
    return d;
  }
}
