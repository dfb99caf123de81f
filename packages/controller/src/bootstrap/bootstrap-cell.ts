// Bootstrap, controller side: called between Booting and Ready. Connects to the new agent's
// CellBootstrap listener (TLS with the agent's throwaway certificate), proves the one-time
// token, receives a CSR for the key the agent made, signs it for that cell's identity (the
// cell ID as a SPIFFE URI, plus its instance ID and IP) and installs it. From then on the
// agent accepts only mTLS with certificates from this CA.
//
// The throwaway certificate cannot be verified against anything (nothing is known about the
// cell's key yet); the token is what authenticates the controller to the agent. The controller
// pins the certificate it first sees at the address (a TLS probe), talks gRPC only to a server
// presenting exactly that certificate, and signs the CSR only if it is for that certificate's
// key — so a CSR cannot be relayed from a different endpoint. The resulting certificate names
// only this cell.
import { splitHostPort } from '@cello/proto';
import { X509Certificate as NodeX509 } from 'node:crypto';
import { isIP } from 'node:net';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { CellBootstrapClient, InstallCertificateRequest, RequestCertificateRequest, type InstallCertificateResponse, type RequestCertificateResponse } from '@cello/proto/cell';
import type { Logger } from 'pino';
import { DEFAULT_TRUST_DOMAIN, identityOf, identityUri } from '../security/identity.js';
import * as x509 from '../security/x509.js';
import { Backoff } from '../util/backoff.js';
import { CelloError } from '../errors.js';

/** Waiting for a new cell's agent: 100 ms doubling to 2 s, until the bootstrap deadline. */
const BOOTSTRAP_RETRY = { baseMs: 100, maxMs: 2_000 };

export interface CsrSigner {
  /** The CA certificate (PEM) that the agent's user data carries. */
  readonly certPem: string;
  /** The CA's trust domain (default "cello"): the signed certificate must name spiffe://<it>/cell/<cellId>. */
  readonly trustDomain?: string;
  signCsr(csrPem: string, req: { cellId: string; ips?: string[]; dnsNames?: string[]; ttlSeconds?: number }): Promise<string>;
}

export interface TokenConsumer {
  consumeBootstrapToken(cellId: string, token: string): Promise<void>;
}

export interface BootstrapCellOptions {
  /** host:port of the agent's bootstrap listener. */
  address: string;
  cellId: string;
  /** The one-time token that is in the cell's user data. */
  token: string;
  ca: CsrSigner;
  /**
   * The controller's record of outstanding tokens: consumed before the token is sent, so of
   * two controllers (or two attempts) only one ever bootstraps a cell.
   */
  tokens?: TokenConsumer;
  /** Put in the certificate's SANs: the cell's IP(s) and names such as its instance ID. */
  ips?: string[];
  dnsNames?: string[];
  ttlSeconds?: number;
  /** Overall deadline, including waiting for the agent to start listening. Default 120 s. */
  timeoutMs?: number;
  logger?: Logger;
}

export interface BootstrapResult {
  certPem: string;
  notAfter: Date;
  /** Connection attempts until the agent answered. */
  attempts: number;
  elapsedMs: number;
}

/** `agentStatus`: the gRPC status the agent answered with, when it answered at all. */
export class BootstrapError extends CelloError {
  constructor(
    readonly cellId: string,
    message: string,
    readonly agentStatus?: status,
  ) {
    super(agentStatus === status.UNAVAILABLE ? 'Unavailable' : 'FailedPrecondition', `bootstrap of cell ${cellId}: ${message}`);
  }
}

function unary<Req, Res>(
  fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
  deadline: Date,
): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res))));
}

function spkiOf(raw: Buffer): Buffer {
  return new NodeX509(raw).publicKey.export({ type: 'spki', format: 'der' });
}

function toPem(raw: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${raw.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`;
}

/** The certificate the server at `address` presents (raw DER); rejects when nothing listens. */
function probeCertificate(address: string, timeoutMs: number): Promise<Buffer> {
  const { host, port } = splitHostPort(address);
  return new Promise((resolve, reject) => {
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'], ...(isIP(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => sock.destroy(new Error(`TLS handshake with ${address} timed out`)), timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const cert: PeerCertificate = sock.getPeerCertificate();
      sock.destroy();
      if (!cert?.raw) reject(new Error(`${address} presented no certificate`));
      else resolve(cert.raw);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function bootstrapCell(o: BootstrapCellOptions): Promise<BootstrapResult> {
  const started = Date.now();
  const deadline = started + (o.timeoutMs ?? 120_000);
  const log = o.logger?.child({ component: 'bootstrap', cellId: o.cellId, address: o.address });
  if (o.tokens) {
    try {
      await o.tokens.consumeBootstrapToken(o.cellId, o.token);
    } catch (err) {
      throw new BootstrapError(o.cellId, (err as Error).message);
    }
  }

  // Wait (until the deadline) for the instance's agent to listen, and pin what it presents.
  let attempts = 0;
  let pinned: Buffer | undefined;
  // One back-off across both waits below: a cell slow to listen is also slow to answer.
  const backoff = new Backoff(BOOTSTRAP_RETRY);
  while (!pinned) {
    attempts++;
    try {
      pinned = await probeCertificate(o.address, Math.max(1000, Math.min(10_000, deadline - Date.now())));
    } catch (err) {
      const delay = backoff.next();
      if (Date.now() + delay >= deadline) {
        throw new BootstrapError(o.cellId, `no agent answered at ${o.address} before the deadline: ${(err as Error).message}`, status.UNAVAILABLE);
      }
      log?.debug({ attempt: attempts, err: (err as Error).message }, 'agent not answering yet');
      await new Promise((r) => setTimeout(r, delay));
    }
  }
  const pinnedPem = toPem(pinned);
  const creds = credentials.createSsl(Buffer.from(pinnedPem), null, null, {
    // The pinned certificate is the only trust anchor; it names no host, so only its identity
    // (byte for byte) is checked.
    checkServerIdentity: (_host, cert) =>
      cert.raw && Buffer.compare(cert.raw, pinned!) === 0 ? undefined : new Error(`${o.address} changed its certificate during the bootstrap`),
  });
  const client = new CellBootstrapClient(o.address, creds, { 'grpc.max_receive_message_length': 1 << 20 });
  try {
    let res: RequestCertificateResponse | undefined;
    for (;;) {
      try {
        const callDeadline = new Date(Math.min(deadline, Date.now() + 10_000));
        res = await unary(client.requestCertificate.bind(client), RequestCertificateRequest.fromPartial({ token: o.token }), callDeadline);
        break;
      } catch (err) {
        const e = err as ServiceError;
        const delay = backoff.next();
        // A transport hiccup before the agent saw the request: try again until the deadline.
        if (e.code === status.UNAVAILABLE && Date.now() + delay < deadline) {
          attempts++;
          log?.debug({ attempt: attempts, code: status[e.code] }, 'bootstrap call failed; retrying');
          await new Promise((r) => setTimeout(r, delay));
          continue;
        }
        throw new BootstrapError(o.cellId, `RequestCertificate: ${e.details || e.message}`, e.code);
      }
    }
    if (res.cellId !== o.cellId) throw new BootstrapError(o.cellId, `the agent at ${o.address} says it is cell ${JSON.stringify(res.cellId)}`);
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(res.csrPem);
    } catch (err) {
      throw new BootstrapError(o.cellId, `the agent's CSR does not parse: ${(err as Error).message}`);
    }
    if (!Buffer.from(csr.publicKey.rawData).equals(spkiOf(pinned))) {
      throw new BootstrapError(o.cellId, 'the CSR is not for the key that serves this TLS session; refusing to sign it');
    }
    const certPem = await o.ca.signCsr(res.csrPem, {
      cellId: o.cellId,
      ...(o.ips ? { ips: o.ips } : {}),
      ...(o.dnsNames ? { dnsNames: o.dnsNames } : {}),
      ...(o.ttlSeconds ? { ttlSeconds: o.ttlSeconds } : {}),
    });
    // Whatever signed it, what goes to the cell must name exactly this cell in this trust
    // domain and nothing else: a second URI SAN, another cell or another domain would make the
    // cell's key speak for someone it is not to every peer of the CA.
    const want = `spiffe://${o.ca.trustDomain ?? DEFAULT_TRUST_DOMAIN}/cell/${o.cellId}`;
    const got = identityOf(certPem);
    if (got === undefined || identityUri(got) !== want) {
      const uris =
        new NodeX509(certPem).subjectAltName
          ?.split(', ')
          .filter((n) => n.startsWith('URI:'))
          .map((n) => n.slice(4)) ?? [];
      throw new BootstrapError(o.cellId, `the signed certificate names ${uris.join(', ') || 'no identity'}, expected exactly ${want}; not installing it`);
    }
    try {
      await unary<InstallCertificateRequest, InstallCertificateResponse>(
        client.installCertificate.bind(client),
        InstallCertificateRequest.fromPartial({ token: o.token, certificatePem: certPem, caPem: o.ca.certPem }),
        new Date(Math.max(deadline, Date.now() + 5000)),
      );
    } catch (err) {
      const e = err as ServiceError;
      throw new BootstrapError(o.cellId, `InstallCertificate: ${e.details || e.message}`, e.code);
    }
    const elapsedMs = Date.now() - started;
    log?.info({ attempts, elapsedMs }, 'cell bootstrapped: certificate installed');
    return { certPem, notAfter: new Date(new NodeX509(certPem).validTo), attempts, elapsedMs };
  } finally {
    client.close();
  }
}

/**
 * The reconciler's BootstrapFn over bootstrapCell: the cell's certificate carries the address
 * the controller dials (its IP) besides the cell identity.
 */
export function bootstrapFnFor(
  ca: CsrSigner,
  opts: { tokens?: TokenConsumer; ttlSeconds?: number; timeoutMs?: number; logger?: Logger } = {},
): (args: { address: string; token: string; cellId: string; caPem: string }) => Promise<void> {
  return async ({ address, token, cellId }) => {
    const { host } = splitHostPort(address);
    await bootstrapCell({
      address,
      cellId,
      token,
      ca,
      ...(isIP(host) ? { ips: [host] } : { dnsNames: [host] }),
      ...(opts.tokens ? { tokens: opts.tokens } : {}),
      ...(opts.ttlSeconds ? { ttlSeconds: opts.ttlSeconds } : {}),
      ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
  };
}
