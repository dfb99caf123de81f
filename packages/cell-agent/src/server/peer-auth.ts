// Who may drive this agent. mTLS alone only proves that a peer holds some certificate of the
// controller's CA — and every cell holds one, as (soon) do the API's users. A cell's key sits on
// that cell (and, for local cells, in a directory on the controller's machine), so chain
// validation alone would let one cell apply pods to, exec into and port-forward to every other
// cell. The agent therefore names who it serves: the controller's client identity
// `spiffe://<trust domain>/client/controller` (plus any client names the operator lists with
// `--allow-client`), in the trust domain of the agent's own cell certificate, carried as the
// certificate's single URI SAN. The check runs on every gRPC call of every service on the port
// (a server interceptor, so no handler can forget it) and on the port-forward stream port.
import 'reflect-metadata';
import { X509Certificate as NodeX509 } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import * as x509 from '@peculiar/x509';
import { Metadata, ServerInterceptingCall, status, type ServerInterceptingCallInterface, type ServerInterceptor } from '@grpc/grpc-js';
import { isSpiffeName, parseSpiffeId, type SpiffeId } from '@cello/proto';

/** The controller's client name: the only client an agent serves by default. */
export const CONTROLLER_CLIENT_NAME = 'controller';

export type UriSans = { ok: true; id: SpiffeId } | { ok: false; reason: string };

/**
 * The single Cello identity a certificate (DER) names. The URI SANs are read from the parsed
 * extension, not from Node's `subjectaltname` text (whose ", "-joined form is ambiguous when a
 * name contains ", "); a certificate with no URI SAN, several, or one that is not a Cello
 * SPIFFE ID names nobody.
 */
export function spiffeIdOf(der: Buffer | ArrayBuffer): UriSans {
  let uris: string[];
  try {
    const cert = new x509.X509Certificate(der instanceof ArrayBuffer ? der : new Uint8Array(der));
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
    uris = (san?.names.items ?? []).filter((n) => n.type === 'url').map((n) => n.value);
  } catch (err) {
    return { ok: false, reason: `a certificate that does not parse (${(err as Error).message})` };
  }
  if (uris.length === 0) return { ok: false, reason: 'a certificate with no URI SAN (no Cello identity)' };
  if (uris.length > 1) return { ok: false, reason: `a certificate with ${uris.length} URI SANs (${uris.join(', ')}); a Cello identity is exactly one` };
  const id = parseSpiffeId(uris[0]!);
  return id ? { ok: true, id } : { ok: false, reason: `${uris[0]} (not a Cello identity)` };
}

export function pemToDer(pem: string): Buffer {
  return new NodeX509(pem).raw;
}

export type PeerDecision = { ok: true; id: SpiffeId } | { ok: false; reason: string };

export interface PeerPolicy {
  /** The identities accepted, for messages and logs. */
  readonly required: string[];
  check(cert: PeerCertificate | undefined | null): PeerDecision;
}

/**
 * The policy for an agent whose own certificate is `ownCertPem`: that certificate must name a
 * cell (`spiffe://<td>/cell/<id>`, its single URI SAN), and clients are accepted only as
 * `spiffe://<td>/client/<name>` for the controller or a name in `extraClients` — never another cell, never an
 * API user (`/user/...`), never another trust domain signed by the same CA.
 */
export function agentPeerPolicy(ownCertPem: string, extraClients: readonly string[] = []): PeerPolicy {
  const own = spiffeIdOf(pemToDer(ownCertPem));
  if (!own.ok) throw new Error(`the agent's certificate (--tls-cert) must name this cell as spiffe://<trust domain>/cell/<id>; it is ${own.reason}`);
  if (own.id.kind !== 'cell') throw new Error(`the agent's certificate (--tls-cert) names ${own.id.uri}, not a cell (spiffe://<trust domain>/cell/<id>)`);
  for (const n of extraClients) if (!isSpiffeName('client', n)) throw new Error(`--allow-client: ${JSON.stringify(n)} is not a client name (letters, digits, '.', '_', '-')`);
  const td = own.id.trustDomain;
  // The controller is always served: an operator's extra name can add, never lock it out.
  const allowed = new Set([CONTROLLER_CLIENT_NAME, ...extraClients]);
  const required = [...allowed].map((n) => `spiffe://${td}/client/${n}`);
  const requiredText = required.join(' or ');
  // Parsing a certificate costs ~0.1 ms; a connection's calls all present the same one.
  const cache = new Map<string, PeerDecision>();
  return {
    required,
    check(cert) {
      const raw = cert?.raw;
      if (!raw || raw.length === 0) return { ok: false, reason: `no client certificate; this agent serves only ${requiredText}` };
      const key = raw.toString('base64');
      const hit = cache.get(key);
      if (hit) return hit;
      const got = spiffeIdOf(raw);
      let d: PeerDecision;
      if (!got.ok) d = { ok: false, reason: `the client presented ${got.reason}; this agent serves only ${requiredText}` };
      else if (got.id.kind !== 'client' || got.id.trustDomain !== td || !allowed.has(got.id.name)) {
        d = { ok: false, reason: `the client certificate names ${got.id.uri}; this agent serves only ${requiredText}` };
      } else d = got;
      if (cache.size >= 64) cache.delete(cache.keys().next().value!);
      cache.set(key, d);
      return d;
    },
  };
}

/**
 * A grpc-js server interceptor refusing, with PERMISSION_DENIED, every call whose peer the
 * policy does not accept — before the handler runs, so before any request message is read.
 * `onRefused` is for the log (the peer address and the reason).
 */
export function peerAuthInterceptor(policy: () => PeerPolicy, onRefused?: (method: string, peer: string, reason: string) => void): ServerInterceptor {
  return (methodDescriptor, call: ServerInterceptingCallInterface) => {
    const decision = policy().check(call.getAuthContext()?.sslPeerCertificate);
    if (decision.ok) return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: () => {
            onRefused?.(methodDescriptor.path, call.getPeer(), decision.reason);
            call.sendStatus({ code: status.PERMISSION_DENIED, details: decision.reason, metadata: new Metadata() });
          },
          onReceiveMessage: () => {},
          onReceiveHalfClose: () => {},
        });
      },
    });
  };
}
