// Key, CSR and throwaway certificate for the bootstrap. @peculiar/x509 (through tsyringe)
// needs the Reflect metadata polyfill loaded before it is evaluated, hence this one module.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

type CryptoKeyPair = webcrypto.CryptoKeyPair;
const cryptoImpl = webcrypto as unknown as NonNullable<Parameters<typeof x509.X509CertificateGenerator.create>[1]>;
const EC: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGN: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

export interface CellKey {
  keys: CryptoKeyPair;
  keyPem: string;
  /** SubjectPublicKeyInfo, DER: what the controller compares with the CSR's key. */
  spki: Buffer;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

/** A fresh P-256 key, made on the cell; it never leaves it. */
export async function newCellKey(): Promise<CellKey> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const keyPem = pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  return { keys, keyPem, spki };
}

export async function makeCsr(key: CellKey, cellId: string): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${cellId}`, keys: key.keys, signingAlgorithm: SIGN }, cryptoImpl);
  return csr.toString('pem');
}

/**
 * The self-signed certificate the bootstrap listener presents. It proves nothing (the token
 * proves the controller; the signed certificate later proves the cell) but it encrypts the
 * token in transit and binds the session to the key the CSR is for.
 */
export async function throwawayCertificate(key: CellKey, cellId: string): Promise<string> {
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8)))
        .toString('hex')
        .replace(/^[89a-f]/, '1'),
      name: `CN=${cellId} bootstrap`,
      notBefore: new Date(now - 5 * 60_000),
      notAfter: new Date(now + 24 * 3600_000),
      keys: key.keys,
      signingAlgorithm: SIGN,
    },
    cryptoImpl,
  );
  return cert.toString('pem');
}

export interface CertificateCheck {
  certPem: string;
  caPem: string;
  key: CellKey;
  cellId: string;
  /** The trust domain the certificate must name (default "cello", the controller's default). */
  trustDomain?: string;
  now?: Date;
}

export const DEFAULT_TRUST_DOMAIN = 'cello';

/** Refuses a certificate that is not for this key, not from this CA, not valid now, or not naming this cell. */
export async function checkIssuedCertificate(c: CertificateCheck): Promise<void> {
  let cert: x509.X509Certificate;
  let ca: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(c.certPem);
  } catch (err) {
    throw new Error(`certificate_pem does not parse: ${(err as Error).message}`);
  }
  try {
    ca = new x509.X509Certificate(c.caPem);
  } catch (err) {
    throw new Error(`CA certificate does not parse: ${(err as Error).message}`);
  }
  if (!Buffer.from(cert.publicKey.rawData).equals(c.key.spki)) {
    throw new Error('certificate_pem is not for the key this cell generated');
  }
  const signed = await cert.verify({ publicKey: ca.publicKey, signatureOnly: true }, cryptoImpl).catch(() => false);
  if (!signed) throw new Error('certificate_pem is not signed by the controller CA from the user data');
  const now = c.now ?? new Date();
  if (now < cert.notBefore || now >= cert.notAfter) {
    throw new Error(`certificate_pem is not valid now (valid ${cert.notBefore.toISOString()} to ${cert.notAfter.toISOString()})`);
  }
  // Exactly one identity, and exactly this one: a second URI SAN (say, the controller's client
  // identity) or another trust domain signed by the same CA would make this cell's key speak
  // for someone else to any peer that takes the first or any match.
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const uris = (san?.names.items ?? []).filter((n) => n.type === 'url').map((n) => n.value);
  const want = `spiffe://${c.trustDomain ?? DEFAULT_TRUST_DOMAIN}/cell/${c.cellId}`;
  if (uris.length !== 1 || uris[0] !== want) {
    throw new Error(`certificate_pem must name exactly ${want} as its one URI SAN; it has ${uris.length === 0 ? 'none' : uris.join(', ')}`);
  }
}

export function samePem(a: string, b: string): boolean {
  const norm = (s: string) => s.replace(/\s+/g, '');
  return norm(a) === norm(b);
}
