// Renews every cell's certificate before it expires, whatever the provider: the controller asks
// the agent (CellCertificates, on the mTLS channel it already has) for a CSR for a fresh key,
// signs it for that cell, and installs it; the agent swaps its server credentials in place, so
// neither the agent nor its pod restarts and open streams carry on.
//
// When a cell's certificate expires is learnt from the TLS handshakes the controller makes
// anyway (observe(), fed by the channel credentials' server check) and from each renewal's
// answer — nothing is polled and nothing extra is stored.
import { splitHostPort } from '@cello/proto';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { InstallRenewalRequest, RequestRenewalRequest, type CellCertificatesClient, type InstallRenewalResponse, type RequestRenewalResponse } from '@cello/proto/cell';
import { errMsg } from '../util/errors.js';
import type { Logger } from '../obs/logger.js';
import type { Metrics } from '../obs/metrics.js';

export interface CsrSigner {
  signCsr(csrPem: string, req: { cellId: string; ips?: string[]; dnsNames?: string[]; ttlSeconds?: number }): Promise<string>;
}

export interface RenewerOptions {
  ca: CsrSigner;
  /** The CellCertificates client on the cell's existing channel. */
  client(cellId: string, address: string): CellCertificatesClient;
  ttlSeconds: number;
  log: Logger;
  metrics?: Metrics;
  /** Renewals running at once (each is a key generation on the cell and a signature here). */
  concurrency?: number;
  /** Per-call deadline. Default 10 s. */
  callTimeoutMs?: number;
  /** Wait after a failed renewal before trying that cell again. Default 5 s. */
  retryAfterMs?: number;
}

interface Validity {
  from: number;
  to: number;
}

function unary<Req, Res>(client: CellCertificatesClient, method: 'requestRenewal' | 'installRenewal', req: Req, timeoutMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as unknown as (r: Req, md: Metadata, o: { deadline: number }, cb: (err: ServiceError | null, res: Res) => void) => void;
    fn.call(client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

export class CellCertificateRenewer {
  private readonly validity = new Map<string, Validity>();
  private readonly running = new Set<string>();
  private readonly notBefore = new Map<string, number>();

  constructor(private readonly o: RenewerOptions) {}

  /** A certificate a cell presented (or was just given). */
  observe(cellId: string, validFrom: Date | string, validTo: Date | string): void {
    const from = typeof validFrom === 'string' ? Date.parse(validFrom) : validFrom.getTime();
    const to = typeof validTo === 'string' ? Date.parse(validTo) : validTo.getTime();
    if (!Number.isFinite(from) || !Number.isFinite(to)) return;
    const cur = this.validity.get(cellId);
    // An old connection's handshake must not make a renewed cell look due again.
    if (cur && cur.to >= to) return;
    this.validity.set(cellId, { from, to });
  }

  forget(cellId: string): void {
    this.validity.delete(cellId);
    this.notBefore.delete(cellId);
  }

  /** Expiry known for this cell, if any (tests, describe). */
  expiry(cellId: string): Date | undefined {
    const v = this.validity.get(cellId);
    return v ? new Date(v.to) : undefined;
  }

  /** Two thirds of the lifetime gone (the CA's rule), or already outside it. */
  due(cellId: string, now = Date.now()): boolean {
    const v = this.validity.get(cellId);
    if (!v) return false;
    return now < v.from || now >= v.from + ((v.to - v.from) * 2) / 3;
  }

  /** Starts renewals for the due cells among `cells` (live cells with an address); never throws. */
  check(cells: Iterable<{ id: string; address: string }>, now = Date.now()): void {
    const max = this.o.concurrency ?? 8;
    for (const c of cells) {
      if (this.running.size >= max) return;
      if (!c.address || this.running.has(c.id) || !this.due(c.id, now)) continue;
      if ((this.notBefore.get(c.id) ?? 0) > now) continue;
      this.running.add(c.id);
      this.renew(c.id, c.address)
        .catch(() => this.notBefore.set(c.id, Date.now() + (this.o.retryAfterMs ?? 5000)))
        .finally(() => this.running.delete(c.id));
    }
  }

  /** Renews now; resolves with the new certificate's expiry. */
  async renew(cellId: string, address: string): Promise<Date> {
    const timeout = this.o.callTimeoutMs ?? 10_000;
    const client = this.o.client(cellId, address);
    try {
      const req = await unary<RequestRenewalRequest, RequestRenewalResponse>(client, 'requestRenewal', RequestRenewalRequest.fromPartial({}), timeout);
      if (req.cellId !== cellId) throw new Error(`the agent at ${address} says it is cell ${JSON.stringify(req.cellId)}`);
      // The addresses come from the controller's record, never from the agent's word.
      const { host } = splitHostPort(address);
      const certPem = await this.o.ca.signCsr(req.csrPem, { cellId, ...(isIP(host) ? { ips: [host] } : { dnsNames: [host] }), ttlSeconds: this.o.ttlSeconds });
      const res = await unary<InstallRenewalRequest, InstallRenewalResponse>(client, 'installRenewal', InstallRenewalRequest.fromPartial({ certificatePem: certPem }), timeout);
      const cert = new X509Certificate(certPem);
      this.validity.set(cellId, { from: Date.parse(cert.validFrom), to: Date.parse(cert.validTo) });
      this.notBefore.delete(cellId);
      this.o.metrics?.certRenewals.inc({ subject: 'cell', outcome: 'ok' });
      const notAfter = res.notAfter ?? new Date(cert.validTo);
      this.o.log.info({ cell: cellId, notAfter: notAfter.toISOString() }, 'cell certificate renewed');
      return notAfter;
    } catch (err) {
      this.o.metrics?.certRenewals.inc({ subject: 'cell', outcome: 'error' });
      this.o.log.warn({ cell: cellId, err: errMsg(err) }, 'cell certificate renewal failed; will retry');
      throw err;
    }
  }
}
