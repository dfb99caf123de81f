import { createPublicKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as x509 from '../../src/security/x509.js';
import { freePort } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CA_STORE_KEY,
  CertificateAuthority,
  cellServerIdentityCheck,
  identityOf,
  peerIdentity,
  RotatingCertificate,
  UnsealError,
  type IssuedCertificate,
} from '../../src/security/index.js';
import { EmbeddedStore } from '../../src/store/index.js';

const cryptoImpl = webcrypto as unknown as NonNullable<Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[1]>;
const KEY = randomBytes(32).toString('base64');
const dirs: string[] = [];
const stores: EmbeddedStore[] = [];
async function newStore(): Promise<EmbeddedStore> {
  const dir = await fs.mkdtemp(join(tmpdir(), 'cello-ca-'));
  dirs.push(dir);
  const s = await EmbeddedStore.open({ dir });
  stores.push(s);
  return s;
}
afterAll(async () => {
  for (const s of stores) await s.close().catch(() => undefined);
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

// A minimal gRPC service to exercise real mutual TLS: the cell answers with the caller's identity.
const probeService: grpc.ServiceDefinition = {
  whoAmI: {
    path: '/cello.test.Probe/WhoAmI',
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: Buffer) => v,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (v: Buffer) => v,
    responseDeserialize: (b: Buffer) => b,
  },
};
const ProbeClient = grpc.makeGenericClientConstructor(probeService, 'Probe');

/** A "cell agent": serves with the cell certificate and only accepts the controller's clients. */
async function startCellServer(caPem: string, cell: IssuedCertificate): Promise<{ address: string; stop(): Promise<void> }> {
  const server = new grpc.Server();
  server.addService(probeService, {
    whoAmI: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const id = peerIdentity(call);
      if (id?.kind !== 'client') {
        cb({ code: grpc.status.PERMISSION_DENIED, details: `caller ${JSON.stringify(id)} is not a controller` });
        return;
      }
      cb(null, Buffer.from(JSON.stringify(id)));
    },
  });
  const port = await freePort();
  const creds = grpc.ServerCredentials.createSsl(Buffer.from(caPem), [{ private_key: Buffer.from(cell.keyPem), cert_chain: Buffer.from(cell.certPem) }], true);
  await new Promise<void>((res, rej) => server.bindAsync(`127.0.0.1:${port}`, creds, (err) => (err ? rej(err) : res())));
  return {
    address: `127.0.0.1:${port}`,
    stop: () => new Promise<void>((res) => server.tryShutdown(() => res())),
  };
}

type CallResult = { ok: true; body: unknown } | { ok: false; code: number; details: string };

async function callCell(address: string, creds: grpc.ChannelCredentials): Promise<CallResult> {
  return callCellWith(address, creds, {});
}

async function callCellWith(address: string, creds: grpc.ChannelCredentials, options: grpc.ChannelOptions): Promise<CallResult> {
  const client = new ProbeClient(address, creds, options);
  try {
    return await new Promise<CallResult>((resolve) => {
      client.makeUnaryRequest(
        '/cello.test.Probe/WhoAmI',
        (v: Buffer) => v,
        (b: Buffer) => b,
        Buffer.alloc(0),
        { deadline: Date.now() + 5000 },
        (err: grpc.ServiceError | null, res?: Buffer) => {
          if (err) resolve({ ok: false, code: err.code, details: err.details });
          else resolve({ ok: true, body: JSON.parse(res!.toString()) });
        },
      );
    });
  } finally {
    client.close();
  }
}

function mtls(caPem: string, client: IssuedCertificate | undefined, expectCell: string): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(Buffer.from(caPem), client ? Buffer.from(client.keyPem) : null, client ? Buffer.from(client.certPem) : null, {
    checkServerIdentity: cellServerIdentityCheck(expectCell),
  });
}

describe('certificate authority', () => {
  let store: EmbeddedStore;
  let ca: CertificateAuthority;
  let cellA: IssuedCertificate;
  let controller: IssuedCertificate;
  let server: { address: string; stop(): Promise<void> };

  beforeAll(async () => {
    store = await newStore();
    ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: KEY });
    cellA = await ca.issueCellCertificate({ cellId: 'cell-a', ips: ['127.0.0.1'], dnsNames: ['cell-a.cells.local'], ttlSeconds: 3600 });
    controller = await ca.issueClientCertificate('controller');
    server = await startCellServer(ca.certPem, cellA);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('is created once and loaded thereafter, also when two controllers race', async () => {
    const again = await CertificateAuthority.loadOrCreate({ store, encryptionKey: KEY });
    expect(again.certPem).toBe(ca.certPem);
    const fresh = await newStore();
    const [x, y] = await Promise.all([
      CertificateAuthority.loadOrCreate({ store: fresh, encryptionKey: KEY }),
      CertificateAuthority.loadOrCreate({ store: fresh, encryptionKey: KEY }),
    ]);
    expect(x.certPem).toBe(y.certPem);
    const root = new X509Certificate(ca.certPem);
    expect(root.ca).toBe(true);
    expect(root.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('keeps the private key encrypted at rest and refuses a wrong or missing key', async () => {
    const rec = await store.get<{ certPem: string; key: { alg: string; data: string } }>(CA_STORE_KEY);
    expect(rec?.value.key.alg).toBe('AES-256-GCM');
    expect(JSON.stringify(rec?.value)).not.toMatch(/PRIVATE KEY/);
    const wal = await fs.readFile(join(store.dir, 'wal.log'), 'latin1');
    expect(wal).not.toMatch(/PRIVATE KEY/);
    expect(wal).toContain(rec!.value.key.data); // the sealed form is what is on disk

    const wrong = randomBytes(32).toString('base64');
    const err = await CertificateAuthority.loadOrCreate({ store, encryptionKey: wrong }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnsealError);
    expect(String(err)).toMatch(/cannot decrypt the CA private key with the configured security\.caEncryptionKey/);
    await expect(CertificateAuthority.loadOrCreate({ store, encryptionKey: undefined })).rejects.toThrow(/security\.caEncryptionKey is required/);
    await expect(CertificateAuthority.loadOrCreate({ store, encryptionKey: 'c2hvcnQ=' })).rejects.toThrow(/security\.caEncryptionKey must be exactly 32 bytes/);
    // The right key given as hex works too.
    const hex = Buffer.from(KEY, 'base64').toString('hex');
    expect((await CertificateAuthority.loadOrCreate({ store, encryptionKey: hex })).certPem).toBe(ca.certPem);
  });

  it('refuses a sealed key moved under another CA certificate', async () => {
    const other = await newStore();
    const otherCa = await CertificateAuthority.loadOrCreate({ store: other, encryptionKey: KEY });
    const rec = (await store.get<Record<string, unknown>>(CA_STORE_KEY))!.value;
    const forged = await newStore();
    await forged.put(CA_STORE_KEY, { ...rec, certPem: otherCa.certPem });
    await expect(CertificateAuthority.loadOrCreate({ store: forged, encryptionKey: KEY })).rejects.toBeInstanceOf(UnsealError);
  });

  it('issues cell certificates naming exactly that cell, signed by the CA', () => {
    const c = new X509Certificate(cellA.certPem);
    expect(c.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
    expect(c.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true);
    expect(c.subjectAltName).toBe('URI:spiffe://cello/cell/cell-a, DNS:cell-a, DNS:cell-a.cells.local, IP Address:127.0.0.1');
    expect(identityOf(cellA.certPem)).toEqual({ kind: 'cell', cellId: 'cell-a', trustDomain: 'cello' });
    expect(c.ca).toBe(false);
    expect(createPublicKey(cellA.keyPem).asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(identityOf(controller.certPem)).toEqual({ kind: 'client', name: 'controller', trustDomain: 'cello' });
  });

  it('validates requests, naming the field', async () => {
    await expect(ca.issueCellCertificate({ cellId: 'bad/id' })).rejects.toThrow(/cellId must be/);
    await expect(ca.issueCellCertificate({ cellId: 'c', ips: ['300.1.1.1'] })).rejects.toThrow(/ips\[0\] is not a valid IP address/);
    await expect(ca.issueCellCertificate({ cellId: 'c', dnsNames: ['a b'] })).rejects.toThrow(/dnsNames\[0\]/);
    await expect(ca.issueCellCertificate({ cellId: 'c', ttlSeconds: 1 })).rejects.toThrow(/ttlSeconds must be/);
  });

  it('mTLS: the controller certificate is accepted by the cell and the cell sees who called', async () => {
    const r = await callCell(server.address, mtls(ca.certPem, controller, 'cell-a'));
    expect(r).toEqual({ ok: true, body: { kind: 'client', name: 'controller', trustDomain: 'cello' } });
  });

  it('mTLS: no client certificate, or one from another CA, is refused', async () => {
    const none = await callCell(server.address, mtls(ca.certPem, undefined, 'cell-a'));
    // Refused in the TLS handshake: the call never reaches the handler (which would answer
    // PERMISSION_DENIED or OK).
    const handshakeRefusal = [grpc.status.UNAVAILABLE, grpc.status.INTERNAL];
    expect(none.ok).toBe(false);
    expect(handshakeRefusal).toContain(none.ok === false && none.code);

    const otherCa = await CertificateAuthority.loadOrCreate({ store: await newStore(), encryptionKey: KEY });
    const impostor = await otherCa.issueClientCertificate('controller');
    const foreign = await callCell(server.address, mtls(ca.certPem, impostor, 'cell-a'));
    expect(foreign.ok).toBe(false);
    expect(handshakeRefusal).toContain(foreign.ok === false && foreign.code);

    // And the controller does not trust a cell whose certificate comes from another CA.
    const fakeCell = await otherCa.issueCellCertificate({ cellId: 'cell-a', ips: ['127.0.0.1'] });
    const fake = await startCellServer(otherCa.certPem, fakeCell);
    try {
      const r = await callCell(fake.address, mtls(ca.certPem, controller, 'cell-a'));
      expect(r.ok).toBe(false);
    } finally {
      await fake.stop();
    }
  });

  it("one cell's certificate cannot pose as another cell", async () => {
    // The controller dials "cell-b" but reaches a server holding cell-a's valid certificate.
    const asB = await callCell(server.address, mtls(ca.certPem, controller, 'cell-b'));
    expect(asB.ok).toBe(false);
    expect(asB.ok === false && asB.details).toMatch(/spiffe:\/\/cello\/cell\/cell-a, expected spiffe:\/\/cello\/cell\/cell-b/);
    // Clients that verify by TLS name (the cell ID as target name) get the same guarantee.
    const byName = (cellId: string): Promise<CallResult> =>
      callCellWith(server.address, grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(controller.keyPem), Buffer.from(controller.certPem)), {
        'grpc.ssl_target_name_override': cellId,
        'grpc.default_authority': cellId,
      });
    expect((await byName('cell-a')).ok).toBe(true);
    expect((await byName('cell-b')).ok).toBe(false);
    // A cell's certificate used as a client is chain-valid but may only serve: TLS itself
    // refuses it (no client-auth usage), before any handler could be asked to tell it apart.
    const cellB = await ca.issueCellCertificate({ cellId: 'cell-b' });
    const asClient = await callCell(server.address, mtls(ca.certPem, cellB, 'cell-a'));
    expect(asClient.ok).toBe(false);
    expect([grpc.status.UNAVAILABLE, grpc.status.INTERNAL]).toContain(asClient.ok === false && asClient.code);
  });

  it('issues cell certificates for server auth only, whether it makes the key or signs a CSR', async () => {
    const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
    const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
    expect(new X509Certificate(cellA.certPem).keyUsage).toEqual([SERVER_AUTH]);
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=cell-e', keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } }, cryptoImpl);
    expect(new X509Certificate(await ca.signCsr(csr.toString('pem'), { cellId: 'cell-e' })).keyUsage).toEqual([SERVER_AUTH]);
    // The controller's own certificate is the client.
    expect(new X509Certificate(controller.certPem).keyUsage).toContain(CLIENT_AUTH);
  });

  it('signs an agent CSR for the assigned identity only, keeping just its public key', async () => {
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create(
      {
        name: 'CN=cell-z, O=Evil',
        keys,
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        extensions: [
          new x509.SubjectAlternativeNameExtension([
            { type: 'url', value: 'spiffe://cello/client/controller' },
            { type: 'dns', value: 'evil.example' },
          ]),
          new x509.BasicConstraintsExtension(true, 0, true),
        ],
      },
      cryptoImpl,
    );
    const certPem = await ca.signCsr(csr.toString('pem'), { cellId: 'cell-c', ips: ['127.0.0.1'], ttlSeconds: 3600 });
    const c = new X509Certificate(certPem);
    expect(c.subjectAltName).toBe('URI:spiffe://cello/cell/cell-c, DNS:cell-c, IP Address:127.0.0.1');
    expect(c.subject).not.toMatch(/Evil|cell-z/);
    expect(c.ca).toBe(false);
    const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
    expect(c.publicKey.export({ type: 'spki', format: 'der' }).equals(spki)).toBe(true);

    // The agent's own key and the signed certificate serve real mTLS as cell-c.
    const keyPem = `-----BEGIN PRIVATE KEY-----\n${Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64')}\n-----END PRIVATE KEY-----\n`;
    const agent = await startCellServer(ca.certPem, { certPem, keyPem });
    try {
      expect((await callCell(agent.address, mtls(ca.certPem, controller, 'cell-c'))).ok).toBe(true);
    } finally {
      await agent.stop();
    }
  });

  it('refuses a CSR whose signature does not verify, or with another key type', async () => {
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=x', keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } }, cryptoImpl);
    const der = Buffer.from(csr.rawData);
    der[der.length - 1] ^= 0x01; // flip a bit of the signature
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----`;
    await expect(ca.signCsr(tampered, { cellId: 'cell-d' })).rejects.toThrow(/signature does not verify/);

    const p384 = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const other = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=x', keys: p384, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' } }, cryptoImpl);
    await expect(ca.signCsr(other.toString('pem'), { cellId: 'cell-d' })).rejects.toThrow(/ECDSA P-256/);
    await expect(ca.signCsr('not a csr', { cellId: 'cell-d' })).rejects.toThrow(/csrPem/);
  });

  it('says when rotation is due and re-issues before expiry', async () => {
    const now = Date.now();
    const cert = await ca.issueCellCertificate({ cellId: 'cell-r', ttlSeconds: 3600 });
    expect(ca.rotationDue(cert.certPem, new Date(now))).toBe(false);
    expect(ca.rotationDue(cert.certPem, new Date(now + 1000 * 1000))).toBe(false);
    expect(ca.rotationDue(cert.certPem, new Date(now + 3000 * 1000))).toBe(true); // past 2/3, not yet expired
    expect(ca.rotationDue(cert.certPem, new Date(now + 4000 * 1000))).toBe(true); // expired

    let reissued = 0;
    const reissue = async (): Promise<IssuedCertificate> => (reissued++, ca.issueCellCertificate({ cellId: 'cell-r', ttlSeconds: 7200 }));
    const same = await ca.renewIfDue(cert, reissue, new Date(now + 60_000));
    expect(same).toEqual({ renewed: false, value: cert });
    expect(reissued).toBe(0);
    const next = await ca.renewIfDue(cert, reissue, new Date(now + 3000 * 1000));
    expect(next.renewed).toBe(true);
    expect(reissued).toBe(1);
    expect(Date.parse(new X509Certificate(next.value.certPem).validTo)).toBeGreaterThan(Date.parse(new X509Certificate(cert.certPem).validTo));
    expect(identityOf(next.value.certPem)).toEqual({ kind: 'cell', cellId: 'cell-r', trustDomain: 'cello' });
  });

  it('RotatingCertificate renews before expiry and keeps serving the old one if renewal fails', async () => {
    const renewed: IssuedCertificate[] = [];
    const errors: Error[] = [];
    let fail = false;
    const rot = await RotatingCertificate.start(
      ca,
      async () => {
        if (fail) throw new Error('CA unavailable');
        return ca.issueClientCertificate('controller', { ttlSeconds: 3600 });
      },
      { onRenew: (v) => renewed.push(v), onError: (e) => errors.push(e) },
    );
    try {
      const first = rot.current();
      expect(await rot.check(new Date())).toBe(false);
      fail = true;
      expect(await rot.check(new Date(Date.now() + 3000 * 1000))).toBe(false);
      expect(errors.map((e) => e.message)).toEqual(['CA unavailable']);
      expect(rot.current()).toBe(first);
      fail = false;
      expect(await rot.check(new Date(Date.now() + 3000 * 1000))).toBe(true);
      expect(renewed).toHaveLength(1);
      expect(rot.current()).toBe(renewed[0]);
      expect(rot.current().certPem).not.toBe(first.certPem);
      expect((await callCell(server.address, mtls(ca.certPem, rot.current(), 'cell-a'))).ok).toBe(true);
    } finally {
      rot.stop();
    }
  });
});
