// How a client (cellctl, the virtual node, tests) dials the controller API: TLS trusting only
// the controller's CA, checking that the server is the API's identity (not merely any
// certificate of the CA, e.g. a cell's), and presenting a user certificate or a bearer token.
import { credentials, experimental, Metadata, type ChannelCredentials } from '@grpc/grpc-js';
import { controllerIdentityCheck } from '../../security/identity.js';
import type { CertificateSource } from './index.js';

/** The identity (spiffe://<trust domain>/client/controller-api) of the API's serving certificate. */
export const API_SERVER_NAME = 'controller-api';

/**
 * Channel options for a TLS client of the API: the TLS server name is the API's identity, not the
 * dialled address (Node warns on an IP as SNI; the identity check above is what verifies).
 */
export const API_CHANNEL_OPTIONS = { 'grpc.ssl_target_name_override': API_SERVER_NAME } as const;

export interface ApiClientCredentials {
  /** PEM of the controller's CA. */
  caPem: string;
  trustDomain: string;
  certPem?: string;
  keyPem?: string;
  /** A bearer token (in a cluster: a service account token, checked with TokenReview). */
  token?: string;
}

function withToken(creds: ChannelCredentials, token: string | undefined): ChannelCredentials {
  if (!token) return creds;
  const bearer = credentials.createFromMetadataGenerator((_params, cb) => {
    const m = new Metadata();
    m.set('authorization', `Bearer ${token}`);
    cb(null, m);
  });
  return credentials.combineChannelCredentials(creds, bearer);
}

export function apiChannelCredentials(c: ApiClientCredentials): ChannelCredentials {
  const verify = { checkServerIdentity: controllerIdentityCheck(API_SERVER_NAME, c.trustDomain) };
  const tls = credentials.createSsl(Buffer.from(c.caPem), c.keyPem ? Buffer.from(c.keyPem) : null, c.certPem ? Buffer.from(c.certPem) : null, verify);
  return withToken(tls, c.token);
}

/** The same with a client certificate that is renewed in place (the virtual node's). */
export function rotatingApiChannelCredentials(source: CertificateSource, trustDomain: string): ChannelCredentials {
  return experimental.createCertificateProviderChannelCredentials(source, source, {
    checkServerIdentity: controllerIdentityCheck(API_SERVER_NAME, trustDomain),
  });
}
