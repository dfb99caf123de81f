// Authentication and authorization of every controller API call. The API serves TLS with a
// certificate of the controller's CA; a caller proves who it is with a user certificate of that
// CA (controller issue-user) or, in a cluster, a bearer token the API server accepts
// (TokenReview). What it may do is decided by api.policy and, in a cluster, by
// SubjectAccessReview. Plaintext exists only when configured (api.insecure) and only on
// loopback; its callers are system:anonymous and get what the policy grants that user.
import { splitHostPort } from '@cello/proto';
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { experimental, type Metadata, ServerCredentials, type ServiceError } from '@grpc/grpc-js';
import { CelloError, toStatus, type ErrorCode } from '../../errors.js';
import { identityOf, identityUri } from '../../security/identity.js';
import { ANONYMOUS, AnyOf, PolicyAuthorizer, type Attributes, type Authorizer, type PolicyRule, type Principal } from './policy.js';
import type { SubjectAccessReviewer, TokenReviewer } from './kube-review.js';

export * from './policy.js';
export { SubjectAccessReviewer, TokenReviewer } from './kube-review.js';

const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
export const CREDENTIALS_HINT =
  'get credentials with `controller issue-user NAME --group GROUP -o FILE` and pass them with `cellctl --config FILE` (or $CELLO_CONFIG, ~/.cello/config)';

/** True for a listen address only this machine can reach. */
export function isLoopbackListen(address: string): boolean {
  const { host } = splitHostPort(address);
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

type IdListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/** A certificate and key (the API's serving one, the virtual node's client one) swapped in place when renewed: no restart, no dropped connections. */
export class CertificateSource implements experimental.CertificateProvider {
  private readonly ids = new Set<IdListener>();
  private readonly cas = new Set<CaListener>();
  constructor(private pems: { certPem: string; keyPem: string; caPem: string }) {}

  update(next: { certPem: string; keyPem: string }): void {
    this.pems = { ...this.pems, ...next };
    for (const l of this.ids) l({ certificate: Buffer.from(this.pems.certPem), privateKey: Buffer.from(this.pems.keyPem) });
  }
  // grpc-js adds its watcher after the listener: the current value goes out on the next tick.
  addIdentityCertificateListener(l: IdListener): void {
    this.ids.add(l);
    setImmediate(() => this.ids.has(l) && l({ certificate: Buffer.from(this.pems.certPem), privateKey: Buffer.from(this.pems.keyPem) }));
  }
  removeIdentityCertificateListener(l: IdListener): void {
    this.ids.delete(l);
  }
  addCaCertificateListener(l: CaListener): void {
    this.cas.add(l);
    setImmediate(() => this.cas.has(l) && l({ caCertificate: Buffer.from(this.pems.caPem) }));
  }
  removeCaCertificateListener(l: CaListener): void {
    this.cas.delete(l);
  }
}

export interface ApiAuthOptions {
  /** TLS with the controller's CA. Absent: plaintext, which `insecure` must say explicitly. */
  tls?: { caPem: string; trustDomain: string; serving: CertificateSource };
  /** Plaintext on loopback (development only); callers are system:anonymous. */
  insecure?: boolean;
  policy: readonly PolicyRule[];
  /** In a cluster: bearer tokens (TokenReview) ... */
  tokens?: TokenReviewer;
  /** ... and SubjectAccessReview on pods, beside the policy. */
  accessReview?: SubjectAccessReviewer;
}

/** A refusal as the gRPC error the interceptor and handlers answer with. */
export function apiError(code: ErrorCode, message: string): ServiceError {
  return toStatus(new CelloError(code, message));
}

interface CallLike {
  metadata: Metadata;
  getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null;
}

export class ApiAuth {
  private readonly authorizer: Authorizer;
  private readonly ca: X509Certificate | undefined;

  constructor(private readonly o: ApiAuthOptions) {
    if (!o.tls && !o.insecure) throw new Error('api: serving without TLS needs api.insecure: true (loopback only)');
    this.ca = o.tls ? new X509Certificate(o.tls.caPem) : undefined;
    const policy = new PolicyAuthorizer(o.policy);
    this.authorizer = o.accessReview ? new AnyOf([policy, o.accessReview]) : policy;
  }

  /** Server credentials for `address`; a plaintext non-loopback address is refused. */
  credentials(address: string): ServerCredentials {
    if (this.o.tls) {
      // Client certificates are requested, not required: a caller with a bearer token (or none,
      // which then gets a clear UNAUTHENTICATED) still connects; every call checks the chain.
      return experimental.createCertificateProviderServerCredentials(this.o.tls.serving, this.o.tls.serving, false);
    }
    if (!isLoopbackListen(address)) {
      throw new Error(
        `api.listen: ${address} is not a loopback address; plaintext (api.insecure) is only allowed on 127.0.0.1, ::1 or localhost — remove api.insecure to serve TLS`,
      );
    }
    return ServerCredentials.createInsecure();
  }

  async authenticate(call: CallLike): Promise<Principal> {
    const cert = call.getAuthContext?.()?.sslPeerCertificate;
    if (cert?.raw && this.ca) return this.fromCertificate(cert);
    const authz = call.metadata.get('authorization')[0];
    if (typeof authz === 'string' && authz) {
      const m = /^Bearer\s+(\S+)$/i.exec(authz);
      if (!m) throw apiError('Unauthenticated', 'authorization: expected "Bearer TOKEN"');
      if (!this.o.tokens) throw apiError('Unauthenticated', `bearer tokens are not accepted here (api.kubernetes.tokenReview is off); ${CREDENTIALS_HINT}`);
      if (!this.o.tls) throw apiError('Unauthenticated', 'bearer tokens are refused over plaintext');
      let p: Principal | undefined;
      try {
        p = await this.o.tokens.review(m[1]!);
      } catch (err) {
        throw apiError('Unavailable', `TokenReview failed: ${(err as Error).message}`);
      }
      if (!p) throw apiError('Unauthenticated', 'the bearer token was not accepted by the Kubernetes API server (TokenReview)');
      return p;
    }
    if (this.o.insecure && !this.o.tls) return { ...ANONYMOUS, groups: [...ANONYMOUS.groups], via: 'insecure' };
    // grpc-js shows only a certificate that TLS verified against the CA for client use: one of
    // another CA, or a cell's (server-only) certificate, arrives here as no certificate at all.
    throw apiError('Unauthenticated', `no credentials (a client certificate this controller's CA did not issue for client use counts as none): ${CREDENTIALS_HINT}`);
  }

  private fromCertificate(peer: PeerCertificate): Principal {
    const refuse = (why: string) => apiError('Unauthenticated', `client certificate refused: ${why}; ${CREDENTIALS_HINT}`);
    let x: X509Certificate;
    try {
      x = new X509Certificate(peer.raw);
    } catch {
      throw refuse('it does not parse');
    }
    // The TLS layer only requested the certificate; the chain is checked here, for every call.
    if (!x.checkIssued(this.ca!) || !x.verify(this.ca!.publicKey)) throw refuse("it was not issued by this controller's CA");
    const now = Date.now();
    if (now < Date.parse(x.validFrom) || now >= Date.parse(x.validTo)) throw refuse(`it is not valid now (valid ${x.validFrom} to ${x.validTo})`);
    if (!(x.keyUsage ?? []).includes(CLIENT_AUTH_OID)) throw refuse('it is not a client certificate');
    const id = identityOf(x);
    if (id?.kind !== 'user' || id.trustDomain !== this.o.tls!.trustDomain) {
      throw refuse(`it names ${id ? identityUri(id) : 'no Cello identity'}, not a user of spiffe://${this.o.tls!.trustDomain}/user/`);
    }
    const o = peer.subject?.O as string | string[] | undefined;
    return { user: id.name, groups: o === undefined ? [] : Array.isArray(o) ? o : [o], via: 'certificate' };
  }

  /** Throws PERMISSION_DENIED naming who, what and where, unless allowed. */
  async authorize(p: Principal, a: Attributes): Promise<void> {
    let d;
    try {
      d = await this.authorizer.authorize(p, a);
    } catch (err) {
      throw apiError('Unavailable', `authorization failed: ${(err as Error).message}`);
    }
    if (!d.allowed) {
      const where = a.resource === 'cells' ? 'cells (cluster-scoped)' : a.namespace === '*' ? `${a.resource} in every namespace` : `${a.resource} in namespace ${a.namespace}`;
      throw apiError('PermissionDenied', `user ${p.user} (groups: ${p.groups.join(', ') || 'none'}) may not ${a.verb} ${where}: ${d.reason}`);
    }
  }

  /** For lists over every namespace: whether `p` may see namespace `ns` (cached per call by the caller). */
  async allowed(p: Principal, a: Attributes): Promise<boolean> {
    try {
      return (await this.authorizer.authorize(p, a)).allowed;
    } catch {
      return false;
    }
  }
}
export { API_CHANNEL_OPTIONS, API_SERVER_NAME, apiChannelCredentials, rotatingApiChannelCredentials, type ApiClientCredentials } from './client.js';
