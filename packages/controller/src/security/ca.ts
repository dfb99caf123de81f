// The controller's certificate authority: one ECDSA P-256 root, created once and kept in the
// store with its private key sealed under a key from configuration (sealed.ts). It issues
//   - cell certificates naming exactly one cell (URI SAN, see identity.ts) plus the cell's
//     addresses, either with a key it generates or — for the bootstrap flow, where no private
//     key may travel — by signing the agent's CSR, keeping only the CSR's public key;
//   - client certificates for the controller itself (and other named clients).
// Certificates are short-lived and renewed once two thirds of their lifetime has passed.
import { createHash, randomBytes, webcrypto, X509Certificate as NodeX509 } from 'node:crypto';
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
import { isIP } from 'node:net';
import * as x509 from './x509.js';
import { ConflictError, type Store } from '../store/store.js';
import { checkName, checkUserName, DEFAULT_TRUST_DOMAIN, identityUri, type Identity } from './identity.js';
import { parseEncryptionKey, seal, unseal, type Sealed } from './sealed.js';

const cryptoImpl = webcrypto as unknown as NonNullable<Parameters<typeof x509.X509CertificateGenerator.create>[1]>;
const subtle = webcrypto.subtle;
const EC: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGN: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
/**
 * Tolerated clock skew between controller and cells: certificates are valid from a bit earlier
 * — 5 minutes, or a tenth of the lifetime for very short-lived ones (tests use seconds), so the
 * backdate does not swallow the rotation window.
 */
const BACKDATE_MS = 5 * 60 * 1000;
const backdateMs = (ttlSeconds: number) => Math.min(BACKDATE_MS, ttlSeconds * 100);
/** Shortest lifetime a leaf certificate may have (rotation tests run on seconds). */
export const MIN_TTL_SECONDS = 5;
const DAY = 24 * 3600;

export const CA_STORE_KEY = 'security/ca';

/**
 * A cell's certificate serves (the agent's mTLS port) and nothing else: without client-auth
 * usage, TLS itself refuses it as a client, so a cell's key — on the cell, or in a local cell's
 * directory — cannot drive another cell's agent, or call the controller's API.
 */
const CELL_USAGES: ('server' | 'client')[] = ['server'];

export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
}

export interface CellCertificateRequest {
  cellId: string;
  /** Addresses the cell is reached at (put in IP SANs). */
  ips?: string[];
  dnsNames?: string[];
  /** Lifetime in seconds (default 7 days, at most 90 days). */
  ttlSeconds?: number;
}

export interface CertificateAuthorityOptions {
  store: Store;
  /** 32 bytes, base64 or hex: seals the CA private key in the store. */
  encryptionKey: string | Buffer | undefined;
  trustDomain?: string;
  /** Store key of the CA record. Default `security/ca`. */
  storeKey?: string;
  /** Lifetime of a newly created root, in days. Default 3650. */
  caTtlDays?: number;
}

interface CaRecord {
  version: 1;
  certPem: string;
  trustDomain: string;
  key: Sealed;
  createdAt: string;
}

function fingerprint(certPem: string): string {
  return createHash('sha256').update(new NodeX509(certPem).raw).digest('hex');
}

function aadFor(certPem: string): string {
  // Binds the sealed key to its certificate: a key swapped in from another CA record fails.
  return `cello-ca-key/v1/${fingerprint(certPem)}`;
}

function pemKey(pkcs8: ArrayBuffer): string {
  const b64 = Buffer.from(pkcs8).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END PRIVATE KEY-----\n`;
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive INTEGER
  return b.toString('hex');
}

function checkTtl(ttlSeconds: unknown, field: string, max: number): number {
  if (ttlSeconds === undefined) return 7 * DAY;
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds < MIN_TTL_SECONDS || ttlSeconds > max) {
    throw new TypeError(`${field} must be a number of seconds between ${MIN_TTL_SECONDS} and ${max}, got ${JSON.stringify(ttlSeconds)}`);
  }
  return Math.floor(ttlSeconds);
}

function checkList(values: unknown, field: string, kind: 'ip' | 'dns'): string[] {
  if (values === undefined) return [];
  if (!Array.isArray(values)) throw new TypeError(`${field} must be a list`);
  values.forEach((v, i) => {
    const ok = typeof v === 'string' && (kind === 'ip' ? isIP(v) !== 0 : /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/.test(v));
    if (!ok) throw new TypeError(`${field}[${i}] is not a valid ${kind === 'ip' ? 'IP address' : 'DNS name'}: ${JSON.stringify(v)}`);
  });
  return values as string[];
}

export class CertificateAuthority {
  private constructor(
    readonly certPem: string,
    readonly trustDomain: string,
    private readonly cert: x509.X509Certificate,
    private readonly signingKey: CryptoKey,
  ) {}

  /** Loads the CA from the store, creating it on first start. Safe when two controllers race. */
  static async loadOrCreate(opts: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    const key = parseEncryptionKey(opts.encryptionKey);
    const storeKey = opts.storeKey ?? CA_STORE_KEY;
    const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    if (!/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/.test(trustDomain)) {
      throw new TypeError(`security.trustDomain must be a lower-case DNS-like name, got ${JSON.stringify(trustDomain)}`);
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      const existing = await opts.store.get<CaRecord>(storeKey);
      if (existing !== undefined) return CertificateAuthority.fromRecord(existing.value, key);
      const record = await CertificateAuthority.createRecord(key, trustDomain, opts.caTtlDays ?? 3650);
      try {
        await opts.store.put(storeKey, record, { expectRevision: 0 });
        return CertificateAuthority.fromRecord(record, key);
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        // Another controller created it first: use theirs.
      }
    }
    throw new Error(`could not create or load the CA at store key ${storeKey}`);
  }

  /** The CA from its stored record, for a tool that reads the record without opening the store (controller issue-user). */
  static async fromStoredRecord(record: unknown, encryptionKey: string | Buffer | undefined): Promise<CertificateAuthority> {
    return CertificateAuthority.fromRecord(record as CaRecord, parseEncryptionKey(encryptionKey));
  }

  private static async createRecord(key: Buffer, trustDomain: string, days: number): Promise<CaRecord> {
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned(
      {
        serialNumber: serial(),
        name: `CN=Cello CA ${trustDomain}, O=Cello`,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + days * DAY * 1000),
        keys,
        signingAlgorithm: SIGN,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, cryptoImpl),
        ],
      },
      cryptoImpl,
    );
    const certPem = cert.toString('pem');
    const pkcs8 = Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey));
    const sealed = seal(key, pkcs8, aadFor(certPem));
    pkcs8.fill(0);
    return { version: 1, certPem, trustDomain, key: sealed, createdAt: new Date(now).toISOString() };
  }

  private static async fromRecord(record: CaRecord, key: Buffer): Promise<CertificateAuthority> {
    if (record?.version !== 1) throw new Error(`unsupported CA record version ${JSON.stringify(record?.version)}`);
    const pkcs8 = unseal(key, record.key, aadFor(record.certPem), 'the CA private key');
    try {
      // Non-extractable: once loaded, the key can sign but cannot be exported again.
      const signingKey = await subtle.importKey('pkcs8', pkcs8, EC, false, ['sign']);
      return new CertificateAuthority(record.certPem, record.trustDomain, new x509.X509Certificate(record.certPem), signingKey);
    } finally {
      pkcs8.fill(0);
    }
  }

  /** A new key pair and a certificate naming this cell. */
  async issueCellCertificate(req: CellCertificateRequest): Promise<IssuedCertificate> {
    const params = this.checkCell(req);
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const certPem = await this.sign(keys.publicKey, { kind: 'cell', cellId: params.cellId, trustDomain: this.trustDomain }, params, CELL_USAGES);
    return { certPem, keyPem: pemKey(await subtle.exportKey('pkcs8', keys.privateKey)) };
  }

  /**
   * Signs an agent's certificate request for the identity the controller assigns. The CSR's
   * signature must verify (the agent holds the key); everything else it asks for — subject,
   * SANs, extensions — is ignored.
   */
  async signCsr(csrPem: string, req: CellCertificateRequest): Promise<string> {
    const params = this.checkCell(req);
    const publicKey = await this.verifyCsr(csrPem);
    return this.sign(publicKey, { kind: 'cell', cellId: params.cellId, trustDomain: this.trustDomain }, params, CELL_USAGES);
  }

  /**
   * Checks a PEM PKCS#10 request — parses, carries an ECDSA P-256 key, and is signed by that
   * key — and returns the key. Nothing else in the request is trusted.
   */
  async verifyCsr(csrPem: string): Promise<x509.PublicKey> {
    if (typeof csrPem !== 'string' || !csrPem.includes('CERTIFICATE REQUEST')) throw new TypeError('csrPem must be a PEM "CERTIFICATE REQUEST"');
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (err) {
      throw new TypeError(`csrPem does not parse as a PKCS#10 request: ${(err as Error).message}`);
    }
    const alg = csr.publicKey.algorithm as webcrypto.EcKeyAlgorithm;
    if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256') {
      throw new TypeError(`csrPem must carry an ECDSA P-256 public key, got ${alg.name}${alg.namedCurve ? ` ${alg.namedCurve}` : ''}`);
    }
    let valid = false;
    try {
      valid = await csr.verify(cryptoImpl);
    } catch {
      valid = false;
    }
    if (!valid) throw new Error('csrPem signature does not verify: the request was not made with the key it carries');
    return csr.publicKey;
  }

  /** A certificate for a named client (the controller itself, an operator tool). Also usable to serve. */
  async issueClientCertificate(name: string, opts: { ips?: string[]; dnsNames?: string[]; ttlSeconds?: number } = {}): Promise<IssuedCertificate> {
    checkName(name, 'name');
    const ttl = checkTtl(opts.ttlSeconds, 'ttlSeconds', 365 * DAY);
    const ips = checkList(opts.ips, 'ips', 'ip');
    const dnsNames = checkList(opts.dnsNames, 'dnsNames', 'dns');
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const certPem = await this.sign(keys.publicKey, { kind: 'client', name, trustDomain: this.trustDomain }, { ips, dnsNames, ttl }, ['client', 'server']);
    return { certPem, keyPem: pemKey(await subtle.exportKey('pkcs8', keys.privateKey)) };
  }

  /**
   * A certificate for a person or tool calling the controller API: identity
   * spiffe://<trust domain>/user/<name>, groups as the subject's O= values (as Kubernetes reads
   * client certificates), client-auth usage only so it can never serve.
   */
  async issueUserCertificate(name: string, opts: { groups?: string[]; ttlSeconds?: number } = {}): Promise<IssuedCertificate> {
    checkUserName(name, 'name');
    const groups = opts.groups ?? [];
    groups.forEach((g, i) => checkUserName(g, `groups[${i}]`));
    const ttl = checkTtl(opts.ttlSeconds, 'ttlSeconds', 365 * DAY);
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const certPem = await this.sign(keys.publicKey, { kind: 'user', name, trustDomain: this.trustDomain }, { ips: [], dnsNames: [], ttl, groups }, ['client']);
    return { certPem, keyPem: pemKey(await subtle.exportKey('pkcs8', keys.privateKey)) };
  }

  /** A serving-only certificate for one of the controller's own endpoints (the API): server-auth usage only. */
  async issueServerCertificate(name: string, opts: { ips?: string[]; dnsNames?: string[]; ttlSeconds?: number } = {}): Promise<IssuedCertificate> {
    checkName(name, 'name');
    const ttl = checkTtl(opts.ttlSeconds, 'ttlSeconds', 365 * DAY);
    const ips = checkList(opts.ips, 'ips', 'ip');
    const dnsNames = checkList(opts.dnsNames, 'dnsNames', 'dns');
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const certPem = await this.sign(keys.publicKey, { kind: 'client', name, trustDomain: this.trustDomain }, { ips, dnsNames, ttl }, ['server']);
    return { certPem, keyPem: pemKey(await subtle.exportKey('pkcs8', keys.privateKey)) };
  }

  /** True once two thirds of the certificate's lifetime have passed (or it is not yet/no longer valid). */
  rotationDue(certPem: string, now: Date = new Date()): boolean {
    const c = new NodeX509(certPem);
    const from = Date.parse(c.validFrom);
    const to = Date.parse(c.validTo);
    const t = now.getTime();
    if (t < from || t >= to) return true;
    return t >= from + ((to - from) * 2) / 3;
  }

  /**
   * Returns `current` while it is fresh, else a newly issued certificate from `reissue` — the
   * hook for the rotation loop (a cell key generated here, or a new CSR from the agent).
   */
  async renewIfDue<T extends { certPem: string }>(current: T, reissue: () => Promise<T>, now: Date = new Date()): Promise<{ renewed: boolean; value: T }> {
    if (!this.rotationDue(current.certPem, now)) return { renewed: false, value: current };
    const value = await reissue();
    const fresh = new NodeX509(value.certPem);
    if (!fresh.checkIssued(new NodeX509(this.certPem))) throw new Error('renewed certificate was not issued by this CA');
    return { renewed: true, value };
  }

  private checkCell(req: CellCertificateRequest): { cellId: string; ips: string[]; dnsNames: string[]; ttl: number } {
    if (req === null || typeof req !== 'object') throw new TypeError('certificate request must be an object with cellId');
    checkName(req.cellId, 'cellId');
    return {
      cellId: req.cellId,
      ips: checkList(req.ips, 'ips', 'ip'),
      dnsNames: checkList(req.dnsNames, 'dnsNames', 'dns'),
      ttl: checkTtl(req.ttlSeconds, 'ttlSeconds', 90 * DAY),
    };
  }

  private async sign(
    publicKey: CryptoKey | x509.PublicKey,
    id: Identity,
    p: { ips: string[]; dnsNames: string[]; ttl: number; groups?: string[] },
    usages: ('server' | 'client')[],
  ): Promise<string> {
    const now = Date.now();
    const cn = id.kind === 'cell' ? id.cellId : id.name;
    // A user's O= values are its groups, so a user certificate carries no O=Cello.
    const subject = id.kind === 'user' ? [`CN=${cn}`, 'OU=user', ...(p.groups ?? []).map((g) => `O=${g}`)].join(', ') : `CN=${cn}, OU=${id.kind}, O=Cello`;
    // Cells also get their ID as a DNS name, so a client that verifies by TLS name
    // (grpc.ssl_target_name_override = cellId) checks the same identity as the URI check.
    const dns = id.kind === 'cell' && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(id.cellId) ? [id.cellId, ...p.dnsNames.filter((d) => d !== id.cellId)] : p.dnsNames;
    const names: x509.JsonGeneralName[] = [
      { type: 'url', value: identityUri(id) },
      ...dns.map((value) => ({ type: 'dns' as const, value })),
      ...p.ips.map((value) => ({ type: 'ip' as const, value })),
    ];
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: serial(),
        subject,
        issuer: this.cert.subject,
        notBefore: new Date(now - backdateMs(p.ttl)),
        notAfter: new Date(now + p.ttl * 1000),
        publicKey,
        signingKey: this.signingKey,
        signingAlgorithm: SIGN,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension(
            usages.map((u) => (u === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth)),
            false,
          ),
          new x509.SubjectAlternativeNameExtension(names, false),
          await x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey, false, cryptoImpl),
          await x509.SubjectKeyIdentifierExtension.create(publicKey, false, cryptoImpl),
        ],
      },
      cryptoImpl,
    );
    return cert.toString('pem');
  }
}
