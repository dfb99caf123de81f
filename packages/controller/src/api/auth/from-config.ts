// The API's security from the controller's configuration: its serving certificate and the
// virtual node's client certificate (both renewed in place), token and access reviews in a
// cluster, and the local admin's cellctl credentials when asked for (npm start).
import { splitHostPort, joinHostPort } from '@cello/proto';
import { isIP } from 'node:net';
import { userInfo } from 'node:os';
import type { ChannelCredentials } from '@grpc/grpc-js';
import type { Config } from '../../config.js';
import type { CertificateAuthority } from '../../security/ca.js';
import { RotatingCertificate } from '../../security/rotation.js';
import { loadKubeConfig, KubeRest } from '../../k8s/client/rest.js';
import type { Logger } from '../../obs/logger.js';
import { upsertCredentials } from '../../cellctl/config.js';
import { ApiAuth, CertificateSource, MASTERS_GROUP, SubjectAccessReviewer, TokenReviewer } from './index.js';
import { API_SERVER_NAME, rotatingApiChannelCredentials } from './client.js';
export { VIRTUAL_NODE_USER };

import { VIRTUAL_NODE_USER } from './names.js';

export interface ApiSecurity {
  auth: ApiAuth;
  /** For the virtual node's client (undefined with api.insecure). */
  clientCredentials?: ChannelCredentials;
  /** Writes api.adminCredentials once the API's address is known. */
  writeAdminCredentials(address: string): Promise<void>;
  stop(): void;
}

/** What a client on this host dials: the bound address, with a wildcard host made loopback. */
export function dialAddress(listen: string, port: number): string {
  const { host } = splitHostPort(listen);
  return joinHostPort(host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host, port);
}

export async function apiSecurityFromConfig(config: Config, ca: CertificateAuthority | undefined, log: Logger): Promise<ApiSecurity> {
  const api = config.api;
  const ttlSeconds = config.security.controllerCertificateTtlSeconds;
  const checkEveryMs = config.security.rotationCheckSeconds * 1000;
  const stops: (() => void)[] = [];
  let rest: KubeRest | undefined;
  if (api.kubernetes.tokenReview || api.kubernetes.subjectAccessReview) rest = new KubeRest(loadKubeConfig(config.kubernetes?.kubeconfig), 'cello-controller-api');
  const reviews = {
    ...(rest && api.kubernetes.tokenReview ? { tokens: new TokenReviewer({ rest }) } : {}),
    ...(rest && api.kubernetes.subjectAccessReview ? { accessReview: new SubjectAccessReviewer({ rest }) } : {}),
  };
  if (api.insecure || !ca) {
    if (!api.insecure) throw new Error('api: TLS needs the controller CA (security.encryptionKeyFile)');
    log.warn({ listen: api.listen }, 'the controller API serves plaintext (api.insecure): callers are system:anonymous');
    return { auth: new ApiAuth({ insecure: true, policy: api.policy, ...reviews }), writeAdminCredentials: async () => undefined, stop: () => undefined };
  }
  const { host } = splitHostPort(api.listen);
  const ips = ['127.0.0.1', '::1', ...(isIP(host) && host !== '0.0.0.0' && host !== '::' ? [host] : []), ...api.serverNames.filter((n) => isIP(n))];
  const dnsNames = ['localhost', ...api.serverNames.filter((n) => !isIP(n))];
  const onError = (what: string) => (err: Error) => log.warn({ err: err.message }, `${what} renewal failed; will retry`);
  const serving = await RotatingCertificate.start(ca, () => ca.issueServerCertificate(API_SERVER_NAME, { ips: [...new Set(ips)], dnsNames, ttlSeconds }), {
    checkEveryMs,
    onRenew: (c) => source.update(c),
    onError: onError('API serving certificate'),
  });
  const source = new CertificateSource({ ...serving.current(), caPem: ca.certPem });
  stops.push(() => serving.stop());
  let clientCredentials: ChannelCredentials | undefined;
  if (config.kubernetes?.enabled) {
    const vn = await RotatingCertificate.start(ca, () => ca.issueUserCertificate(VIRTUAL_NODE_USER, { groups: [MASTERS_GROUP], ttlSeconds }), {
      checkEveryMs,
      onRenew: (c) => vnSource.update(c),
      onError: onError('virtual node API certificate'),
    });
    const vnSource = new CertificateSource({ ...vn.current(), caPem: ca.certPem });
    stops.push(() => vn.stop());
    clientCredentials = rotatingApiChannelCredentials(vnSource, ca.trustDomain);
  }
  return {
    auth: new ApiAuth({ tls: { caPem: ca.certPem, trustDomain: ca.trustDomain, serving: source }, policy: api.policy, ...reviews }),
    ...(clientCredentials ? { clientCredentials } : {}),
    async writeAdminCredentials(address: string) {
      const a = api.adminCredentials;
      if (!a) return;
      const user = a.user === 'admin' ? (safeUserName() ?? 'admin') : a.user;
      const c = await ca.issueUserCertificate(user, { groups: [MASTERS_GROUP], ttlSeconds: a.ttlSeconds });
      upsertCredentials(a.file, { context: config.controllerId, server: address, trustDomain: ca.trustDomain, caPem: ca.certPem, user, ...c });
      log.info({ file: a.file, user, group: MASTERS_GROUP }, 'wrote the local admin credentials for cellctl');
    },
    stop: () => stops.forEach((s) => s()),
  };
}

/** The local login name when it is a usable user name (root, alice, ...). */
function safeUserName(): string | undefined {
  try {
    const n = userInfo().username;
    return /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$/.test(n) ? n : undefined;
  } catch {
    return undefined;
  }
}
