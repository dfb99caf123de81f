// A throwaway CA for the agent's bootstrap tests. The controller's real CA lives in the
// controller package (src/security); the controller-side tests run the whole exchange with
// it. This one only signs what a test tells it to, including wrong things, to see the agent
// refuse them.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

const cryptoImpl = webcrypto as unknown as NonNullable<Parameters<typeof x509.X509CertificateGenerator.create>[1]>;
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface TestCa {
  certPem: string;
  /** `uris` replaces the certificate's identity (spiffe://cello/cell/<cellId>): hostile variants. */
  sign(csrPem: string, o: { cellId: string; notAfter?: Date; publicKeyFrom?: string; uris?: string[] }): Promise<string>;
  /** A client certificate + key for mTLS to the agent after bootstrap; `uris` as for sign. */
  client(name: string, o?: { uris?: string[] }): Promise<{ certPem: string; keyPem: string }>;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

export async function makeTestCa(name = 'Test CA'): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: '01',
      name: `CN=${name}`,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86400_000),
      keys,
      signingAlgorithm: SIGN,
      extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    },
    cryptoImpl,
  );
  let serial = 2;
  const issue = async (publicKey: x509.PublicKey | webcrypto.CryptoKey, uris: string[], notAfter: Date) =>
    (
      await x509.X509CertificateGenerator.create(
        {
          serialNumber: (serial++).toString(16).padStart(2, '0'),
          subject: `CN=${uris[0]?.split('/').pop() ?? 'nobody'}`,
          issuer: ca.subject,
          notBefore: new Date(Date.now() - 60_000),
          notAfter,
          publicKey,
          signingKey: keys.privateKey,
          signingAlgorithm: SIGN,
          extensions: [
            new x509.SubjectAlternativeNameExtension([...uris.map((value) => ({ type: 'url' as const, value })), { type: 'ip', value: '127.0.0.1' }]),
            new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
          ],
        },
        cryptoImpl,
      )
    ).toString('pem');
  return {
    certPem: ca.toString('pem'),
    async sign(csrPem, o) {
      const csr = new x509.Pkcs10CertificateRequest(o.publicKeyFrom ?? csrPem);
      return issue(csr.publicKey, o.uris ?? [`spiffe://cello/cell/${o.cellId}`], o.notAfter ?? new Date(Date.now() + 3600_000));
    },
    async client(name, o = {}) {
      const k = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
      const certPem = await issue(k.publicKey, o.uris ?? [`spiffe://cello/client/${name}`], new Date(Date.now() + 3600_000));
      return { certPem, keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', k.privateKey)) };
    },
  };
}

/** A CSR for some other key: what an attacker relaying someone else's request would send. */
export async function foreignCsr(cellId: string): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cellId}`, keys, signingAlgorithm: SIGN }, cryptoImpl)).toString('pem');
}
