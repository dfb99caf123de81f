// Certificate renewal on the agent: a real gRPC server on ServerIdentity credentials serving
// CellCertificates. A renewal makes a fresh key here, installs the signed certificate on disk and
// in the server: the next handshake gets it, a connection already open keeps working. Only the
// controller identity may renew; certificates for another key or from another CA are refused. A
// crash between the two renames of a renewal is repaired at the next start.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { credentials, experimental, Metadata, Server, status, type ServiceError } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CellCertificatesClient,
  CellCertificatesService,
  InstallRenewalRequest,
  type RequestRenewalRequest,
  type InstallRenewalResponse,
  type RequestRenewalResponse,
} from '@cello/proto/cell';
import { createCertificateService, loadServerIdentity } from '../../src/bootstrap/renewal.js';
import { makeCsr, newCellKey } from '../../src/bootstrap/x509.js';
import { foreignCsr, makeTestCa, type TestCa } from './test-ca.js';

const logger = pino({ level: 'silent' });
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function cellFiles(ca: TestCa, cellId: string) {
  const dir = await mkdtemp(join(tmpdir(), 'cello-renew-'));
  dirs.push(dir);
  const key = await newCellKey();
  const files = { cert: join(dir, 'cell.pem'), key: join(dir, 'cell.key'), ca: join(dir, 'ca.pem') };
  await writeFile(files.key, key.keyPem, { mode: 0o600 });
  await writeFile(files.cert, await ca.sign(await makeCsr(key, cellId), { cellId }));
  await writeFile(files.ca, ca.certPem);
  return files;
}

function call<Req, Res>(c: CellCertificatesClient, m: 'requestRenewal' | 'installRenewal', req: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    (c[m] as unknown as (r: Req, md: Metadata, o: object, cb: (e: ServiceError | null, r: Res) => void) => void).call(
      c,
      req,
      new Metadata(),
      { deadline: Date.now() + 5000 },
      (e, r) => (e ? reject(e) : resolve(r)),
    ),
  );
}

describe('agent certificate renewal', () => {
  it('swaps the served certificate in place; only the controller may renew; bad certificates are refused', async () => {
    const ca = await makeTestCa();
    const files = await cellFiles(ca, 'cell-r');
    const identity = await loadServerIdentity(files);
    const server = new Server();
    server.addService(CellCertificatesService, createCertificateService({ identity, files, logger }));
    const port = await new Promise<number>((res, rej) =>
      server.bindAsync('127.0.0.1:0', experimental.createCertificateProviderServerCredentials(identity, identity, true), (e, p) => (e ? rej(e) : res(p))),
    );
    const address = `127.0.0.1:${port}`;
    const controller = await ca.client('controller');
    const served: string[] = [];
    const connect = (who: { certPem: string; keyPem: string }) =>
      new CellCertificatesClient(
        address,
        credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(who.keyPem), Buffer.from(who.certPem), {
          checkServerIdentity: (_h: string, c: PeerCertificate) => void served.push(c.serialNumber),
        }),
      );
    const open = connect(controller);
    try {
      const first = new X509Certificate(await readFile(files.cert));
      const req = await call<RequestRenewalRequest, RequestRenewalResponse>(open, 'requestRenewal', {});
      expect(req.cellId).toBe('cell-r');
      expect(req.currentNotAfter?.getTime()).toBe(Date.parse(first.validTo));
      const signed = await ca.sign(req.csrPem, { cellId: 'cell-r' });
      const res = await call<InstallRenewalRequest, InstallRenewalResponse>(open, 'installRenewal', InstallRenewalRequest.fromPartial({ certificatePem: signed }));
      expect(res.notAfter?.getTime()).toBe(Date.parse(new X509Certificate(signed).validTo));
      // On disk: the new certificate with its new key, no half-done files.
      expect(await readFile(files.cert, 'utf8')).toBe(signed);
      expect(new X509Certificate(signed).checkPrivateKey(createPrivateKey(await readFile(files.key, 'utf8')))).toBe(true);
      expect(existsSync(`${files.cert}.next`) || existsSync(`${files.key}.next`)).toBe(false);
      // The connection that was open goes on; a new one is served the new certificate.
      await call(open, 'requestRenewal', {});
      const fresh = connect(controller);
      try {
        await call(fresh, 'requestRenewal', {});
      } finally {
        fresh.close();
      }
      expect(served[0]).toBe(first.serialNumber);
      expect(served.at(-1)).toBe(new X509Certificate(signed).serialNumber);

      // Refusals: a certificate for a key with no outstanding request, one from another CA.
      const notPending = await ca.sign(await foreignCsr('cell-r'), { cellId: 'cell-r' });
      const e1 = (await call(open, 'installRenewal', { certificatePem: notPending }).catch((e: ServiceError) => e)) as ServiceError;
      expect(e1.code).toBe(status.FAILED_PRECONDITION);
      const other = await makeTestCa('Other CA');
      const pending = await call<RequestRenewalRequest, RequestRenewalResponse>(open, 'requestRenewal', {});
      const e2 = (await call(open, 'installRenewal', { certificatePem: await other.sign(pending.csrPem, { cellId: 'cell-r' }) }).catch((e: ServiceError) => e)) as ServiceError;
      expect(e2.code).toBe(status.INVALID_ARGUMENT);
      expect(e2.details).toMatch(/not signed by the controller CA/);
      const e3 = (await call(open, 'installRenewal', { certificatePem: await ca.sign(pending.csrPem, { cellId: 'cell-other' }) }).catch((e: ServiceError) => e)) as ServiceError;
      expect(e3.code).toBe(status.INVALID_ARGUMENT);
      expect(e3.details).toMatch(/must name exactly spiffe:\/\/cello\/cell\/cell-r as its one URI SAN/);
      // A renewal may not move the cell to another trust domain, or add a second identity.
      for (const uris of [['spiffe://elsewhere/cell/cell-r'], ['spiffe://cello/cell/cell-r', 'spiffe://cello/client/controller']]) {
        const e = (await call(open, 'installRenewal', { certificatePem: await ca.sign(pending.csrPem, { cellId: 'cell-r', uris }) }).catch((x: ServiceError) => x)) as ServiceError;
        expect(e.code, uris.join(' ')).toBe(status.INVALID_ARGUMENT);
        expect(e.details).toMatch(/must name exactly spiffe:\/\/cello\/cell\/cell-r as its one URI SAN/);
      }
      // Another client of the same CA (not the controller) may not renew.
      const stranger = connect(await ca.client('operator'));
      try {
        const e4 = (await call(stranger, 'requestRenewal', {}).catch((e: ServiceError) => e)) as ServiceError;
        expect(e4.code).toBe(status.PERMISSION_DENIED);
      } finally {
        stranger.close();
      }
    } finally {
      open.close();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
    }
  });

  it('finishes a renewal a crash cut between the key and the certificate rename', async () => {
    const ca = await makeTestCa();
    const files = await cellFiles(ca, 'cell-c');
    const key = await newCellKey();
    const next = await ca.sign(await makeCsr(key, 'cell-c'), { cellId: 'cell-c' });
    // The key was renamed into place, the certificate is still only at .next.
    await writeFile(`${files.cert}.next`, next);
    await writeFile(`${files.key}.next`, key.keyPem);
    await rename(`${files.key}.next`, files.key);
    const identity = await loadServerIdentity(files);
    expect(identity.current().certPem).toBe(next);
    expect(await readFile(files.cert, 'utf8')).toBe(next);
    expect(existsSync(`${files.cert}.next`)).toBe(false);

    // A key that matches nothing is refused loudly, not served.
    await writeFile(files.key, (await newCellKey()).keyPem);
    await expect(loadServerIdentity(files)).rejects.toThrow(/is not the key of/);
  });
});
