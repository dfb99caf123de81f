// Certificate renewal, agent side: the cell's mTLS identity is replaced while the agent runs.
//
//   - ServerIdentity is a grpc-js CertificateProvider holding the current certificate, key and
//     CA in memory. The agent's server credentials are built on it
//     (experimental.createCertificateProviderServerCredentials), so an update takes effect on
//     the next TLS handshake (http2 setSecureContext): connections already open — the
//     controller's status stream, a running exec or port-forward — are not touched.
//   - cello.cell.v1.CellCertificates, served on the mTLS port to the controller's client
//     identity only: RequestRenewal makes a fresh key here and answers with a CSR for it (the
//     key never leaves the cell); InstallRenewal accepts a certificate for a pending key that
//     this CA signed for this cell, writes key and certificate to the files the agent was
//     started with (so a restarted agent keeps it), and swaps them into the server.
//
// Files: key and certificate are two files, so they are written as `<file>.next` first and then
// renamed, key before certificate; loadServerIdentity finishes a swap a crash interrupted.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rename, rm } from 'node:fs/promises';
import { type ServerUnaryCall, type experimental } from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { InstallRenewalResponse, RequestRenewalResponse, type CellCertificatesServer, type InstallRenewalRequest, type RequestRenewalRequest } from '@cello/proto/cell';
import type { Logger } from 'pino';
import { CelloError } from '@cello/proto';
import { refusableUnary } from './unary.js';
import { writeAtomic } from './identity.js';
import { checkIssuedCertificate, makeCsr, newCellKey, type CellKey } from './x509.js';
import { spiffeIdOf } from '../server/peer-auth.js';

type CertificateProvider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdListener = experimental.IdentityCertificateUpdateListener;

export interface ServerIdentityFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface IdentityPems {
  certPem: string;
  keyPem: string;
  caPem: string;
}

/** The agent's TLS identity, swappable in place; give it to the server as both providers. */
export class ServerIdentity implements CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly idListeners = new Set<IdListener>();

  constructor(private pems: IdentityPems) {}

  current(): IdentityPems {
    return this.pems;
  }

  /** The cell ID and trust domain the current certificate names (its spiffe URI SAN). */
  identity(): { cellId: string; trustDomain: string } | undefined {
    return cellIdentityOf(new X509Certificate(this.pems.certPem).raw);
  }

  update(next: Partial<IdentityPems>): void {
    this.pems = { ...this.pems, ...next };
    if (next.caPem) for (const l of this.caListeners) l({ caCertificate: Buffer.from(this.pems.caPem) });
    for (const l of this.idListeners) l({ certificate: Buffer.from(this.pems.certPem), privateKey: Buffer.from(this.pems.keyPem) });
  }

  // grpc-js calls these when the server binds. The current value is delivered on the next
  // tick: grpc-js registers its watcher only after adding the listener, and a synchronous
  // update would be lost (the server would refuse every connection).
  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    setImmediate(() => this.caListeners.has(l) && l({ caCertificate: Buffer.from(this.pems.caPem) }));
  }
  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: IdListener): void {
    this.idListeners.add(l);
    setImmediate(() => this.idListeners.has(l) && l({ certificate: Buffer.from(this.pems.certPem), privateKey: Buffer.from(this.pems.keyPem) }));
  }
  removeIdentityCertificateListener(l: IdListener): void {
    this.idListeners.delete(l);
  }
}

// Both read the certificate's single URI SAN (peer-auth.ts): one naming several identities names none.
function cellIdentityOf(der: Buffer): { cellId: string; trustDomain: string } | undefined {
  const r = spiffeIdOf(der);
  return r.ok && r.id.kind === 'cell' ? { cellId: r.id.name, trustDomain: r.id.trustDomain } : undefined;
}

function clientIdentityOf(cert: PeerCertificate | undefined): { name: string; trustDomain: string } | undefined {
  if (!cert?.raw) return undefined;
  const r = spiffeIdOf(cert.raw);
  return r.ok && r.id.kind === 'client' ? { name: r.id.name, trustDomain: r.id.trustDomain } : undefined;
}

function keyMatches(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/**
 * Reads the identity files, first completing a renewal a crash interrupted (key renamed, not
 * yet the certificate) so key and certificate always match.
 */
export async function loadServerIdentity(f: ServerIdentityFiles): Promise<ServerIdentity> {
  const nextCert = `${f.cert}.next`;
  const nextKey = `${f.key}.next`;
  let certPem = await readFile(f.cert, 'utf8');
  const keyPem = await readFile(f.key, 'utf8');
  if (!keyMatches(certPem, keyPem)) {
    if (existsSync(nextCert) && keyMatches(await readFile(nextCert, 'utf8'), keyPem)) {
      await rename(nextCert, f.cert);
      certPem = await readFile(f.cert, 'utf8');
    } else {
      throw new Error(`${f.key} is not the key of ${f.cert}`);
    }
  }
  // Leftovers of a renewal that never got as far as renaming the key.
  await rm(nextKey, { force: true });
  await rm(nextCert, { force: true });
  return new ServerIdentity({ certPem, keyPem, caPem: await readFile(f.ca, 'utf8') });
}

export interface CertificateServiceOptions {
  identity: ServerIdentity;
  /** Where the renewed key and certificate are kept (the files the agent was started with). */
  files: ServerIdentityFiles;
  logger: Logger;
  /** Name of the client identity allowed to renew (default "controller"). */
  controllerName?: string;
  now?: () => Date;
  onRenewed?: (notAfter: Date) => void;
}

/** Keys with an outstanding CSR; a few, so a controller retrying after a lost answer still matches. */
const MAX_PENDING = 4;

export function createCertificateService(o: CertificateServiceOptions): CellCertificatesServer {
  const log = o.logger.child({ component: 'cert-renewal' });
  const now = o.now ?? (() => new Date());
  const pending: CellKey[] = [];
  let installing: Promise<unknown> = Promise.resolve();

  const authorize = (call: ServerUnaryCall<unknown, unknown>) => {
    const id = clientIdentityOf(call.getAuthContext?.()?.sslPeerCertificate);
    const mine = o.identity.identity();
    if (!id || id.name !== (o.controllerName ?? 'controller') || (mine && id.trustDomain !== mine.trustDomain)) {
      throw new CelloError('PermissionDenied', "only the controller may renew this cell's certificate");
    }
  };

  const handle = <Req, Res>(name: string, f: (req: Req) => Promise<Res>) =>
    refusableUnary<Req, Res>(log, 'certificate renewal refused', name, async (call) => {
      authorize(call as ServerUnaryCall<unknown, unknown>);
      return f(call.request);
    });

  return {
    requestRenewal: handle<RequestRenewalRequest, RequestRenewalResponse>('RequestRenewal', async () => {
      const id = o.identity.identity();
      if (!id) throw new CelloError('FailedPrecondition', 'the current certificate names no cell');
      const key = await newCellKey();
      pending.push(key);
      if (pending.length > MAX_PENDING) pending.shift();
      const cur = new X509Certificate(o.identity.current().certPem);
      return RequestRenewalResponse.fromPartial({ cellId: id.cellId, csrPem: await makeCsr(key, id.cellId), currentNotAfter: new Date(cur.validTo) });
    }),
    installRenewal: handle<InstallRenewalRequest, InstallRenewalResponse>('InstallRenewal', async (req) => {
      if (typeof req.certificatePem !== 'string' || req.certificatePem === '') throw new CelloError('InvalidArgument', 'certificate_pem: required');
      const id = o.identity.identity()!;
      let cert: X509Certificate;
      try {
        cert = new X509Certificate(req.certificatePem);
      } catch (err) {
        throw new CelloError('InvalidArgument', `certificate_pem does not parse: ${(err as Error).message}`);
      }
      const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
      const i = pending.findIndex((k) => k.spki.equals(spki));
      if (i < 0) throw new CelloError('FailedPrecondition', 'certificate_pem is not for a key this cell has an outstanding request for (RequestRenewal first)');
      const key = pending[i]!;
      try {
        await checkIssuedCertificate({ certPem: req.certificatePem, caPem: o.identity.current().caPem, key, cellId: id.cellId, trustDomain: id.trustDomain, now: now() });
      } catch (err) {
        throw new CelloError('InvalidArgument', (err as Error).message);
      }
      pending.splice(i, 1);
      // One swap at a time: two interleaved renames could pair a key with the other certificate.
      const swap = installing.then(async () => {
        await writeAtomic(`${o.files.key}.next`, key.keyPem, 0o600);
        await writeAtomic(`${o.files.cert}.next`, req.certificatePem, 0o644);
        await rename(`${o.files.key}.next`, o.files.key);
        await rename(`${o.files.cert}.next`, o.files.cert);
        o.identity.update({ certPem: req.certificatePem, keyPem: key.keyPem });
      });
      installing = swap.catch(() => undefined);
      await swap;
      const notAfter = new Date(cert.validTo);
      log.info({ cellId: id.cellId, notAfter: notAfter.toISOString(), serial: cert.serialNumber }, 'certificate renewed; new connections get it');
      o.onRenewed?.(notAfter);
      return InstallRenewalResponse.fromPartial({ notBefore: new Date(cert.validFrom), notAfter });
    }),
  };
}
