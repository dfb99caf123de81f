// Who a certificate speaks for. Every certificate the CA issues carries exactly one identity as
// a URI SAN — spiffe://<trust domain>/cell/<cellId>, spiffe://<trust domain>/client/<name> (the
// controller's own components) or spiffe://<trust domain>/user/<name> (people and tools calling
// the controller API; a distinct kind, so a user named "controller" is never the controller) —
// and peers check that URI, not the host name they dialled (a cell's address can be NATed,
// reused by a later cell, or mapped to loopback in tests; its identity cannot).
import { X509Certificate } from 'node:crypto';
import { isSpiffeName, parseSpiffeId } from '@cello/proto';
import type { PeerCertificate } from 'node:tls';

export type Identity =
  { kind: 'cell'; cellId: string; trustDomain: string } | { kind: 'client'; name: string; trustDomain: string } | { kind: 'user'; name: string; trustDomain: string };

export const DEFAULT_TRUST_DOMAIN = 'cello';

/** Throws a TypeError naming `field` unless `value` is a usable user name. */
export function checkUserName(value: unknown, field: string): asserts value is string {
  if (typeof value !== 'string' || !isSpiffeName('user', value)) {
    throw new TypeError(
      `${field} must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-', starting and ending with a letter or digit; got ${JSON.stringify(value)}`,
    );
  }
}

/** Throws a TypeError naming `field` unless `value` is a usable cell ID or client name. */
export function checkName(value: unknown, field: string): asserts value is string {
  if (typeof value !== 'string' || !isSpiffeName('client', value)) {
    throw new TypeError(`${field} must be 1-128 characters of letters, digits, '.', '_' or '-', starting and ending with a letter or digit; got ${JSON.stringify(value)}`);
  }
}

export function identityUri(id: Identity): string {
  return id.kind === 'cell' ? `spiffe://${id.trustDomain}/cell/${id.cellId}` : `spiffe://${id.trustDomain}/${id.kind}/${id.name}`;
}

/** Parses Node's `subjectaltname` string ("DNS:a, IP Address:1.2.3.4, URI:spiffe://...") into URIs. */
function sanUris(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return [];
  return subjectAltName
    .split(', ')
    .filter((part) => part.startsWith('URI:'))
    .map((part) => part.slice(4));
}

function parseIdentityUri(uri: string): Identity | undefined {
  const id = parseSpiffeId(uri);
  if (id === undefined) return undefined;
  if (id.kind === 'cell') return { kind: 'cell', cellId: id.name, trustDomain: id.trustDomain };
  return { kind: id.kind, name: id.name, trustDomain: id.trustDomain };
}

/** The single identity a certificate names, or undefined if it names none or several. */
export function identityOf(cert: string | Buffer | PeerCertificate | X509Certificate): Identity | undefined {
  let san: string | undefined;
  if (typeof cert === 'string' || Buffer.isBuffer(cert)) san = new X509Certificate(cert).subjectAltName;
  else if (cert instanceof X509Certificate) san = cert.subjectAltName;
  else san = cert.subjectaltname;
  const ids = sanUris(san).map(parseIdentityUri);
  if (ids.length !== 1 || ids[0] === undefined) return undefined;
  return ids[0];
}

/**
 * For grpc-js `credentials.createSsl(..., { checkServerIdentity })`: accept the server only if
 * its certificate names exactly this cell. Chain validation against the CA happens before.
 */
export function cellServerIdentityCheck(cellId: string, trustDomain = DEFAULT_TRUST_DOMAIN): (hostname: string, cert: PeerCertificate) => Error | undefined {
  checkName(cellId, 'cellId');
  return (_hostname, cert) => {
    const id = identityOf(cert);
    if (id?.kind === 'cell' && id.cellId === cellId && id.trustDomain === trustDomain) return undefined;
    const got = id === undefined ? 'no Cello identity' : identityUri(id);
    return new Error(`server certificate names ${got}, expected spiffe://${trustDomain}/cell/${cellId}`);
  };
}

/** For dialling the controller (or another named client-identity that serves): the server must be `name`. */
export function controllerIdentityCheck(name: string, trustDomain = DEFAULT_TRUST_DOMAIN): (hostname: string, cert: PeerCertificate) => Error | undefined {
  checkName(name, 'name');
  return (_hostname, cert) => {
    const id = identityOf(cert);
    if (id?.kind === 'client' && id.name === name && id.trustDomain === trustDomain) return undefined;
    return new Error(`server certificate names ${id ? identityUri(id) : 'no Cello identity'}, expected spiffe://${trustDomain}/client/${name}`);
  };
}

/**
 * The identity of the peer of a grpc-js server call (mutual TLS). Undefined when the connection
 * is not TLS or carries no client certificate.
 */
export function peerIdentity(call: { getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null }): Identity | undefined {
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  if (cert === undefined || cert === null || Object.keys(cert).length === 0) return undefined;
  return identityOf(cert);
}
