import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BootstrapTokenError, BootstrapTokens, CertificateAuthority, completeBootstrap, identityOf } from '../../src/security/index.js';
import * as x509 from '../../src/security/x509.js';
import { EmbeddedStore } from '../../src/store/index.js';

const cryptoImpl = webcrypto as unknown as NonNullable<Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[1]>;

/** What an agent does on first boot: make a key that never leaves it, and a CSR for it. */
async function agentCsr(): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=agent', keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } }, cryptoImpl);
  return csr.toString('pem');
}

describe('completeBootstrap', () => {
  let dir: string;
  let store: EmbeddedStore;
  let ca: CertificateAuthority;
  let tokens: BootstrapTokens;
  beforeAll(async () => {
    dir = await fs.mkdtemp(join(tmpdir(), 'cello-boot-'));
    store = await EmbeddedStore.open({ dir });
    ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
    tokens = new BootstrapTokens(store);
  });
  afterAll(async () => {
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('signs the agent CSR for the token’s cell once; a bad CSR does not burn the token; replay is refused', async () => {
    const { token } = await tokens.issueBootstrapToken('cell-boot', 300);
    await expect(completeBootstrap(ca, tokens, { cellId: 'cell-boot', token, csrPem: 'garbage' })).rejects.toThrow(/csrPem/);

    const csrPem = await agentCsr();
    await expect(completeBootstrap(ca, tokens, { cellId: 'cell-other', token, csrPem })).rejects.toBeInstanceOf(BootstrapTokenError);
    const { certPem, caPem } = await completeBootstrap(ca, tokens, { cellId: 'cell-boot', token, csrPem, ips: ['10.0.0.7'] });
    expect(caPem).toBe(ca.certPem);
    expect(identityOf(certPem)).toEqual({ kind: 'cell', cellId: 'cell-boot', trustDomain: 'cello' });
    expect(new X509Certificate(certPem).subjectAltName).toContain('IP Address:10.0.0.7');

    const replay = await completeBootstrap(ca, tokens, { cellId: 'cell-boot', token, csrPem: await agentCsr() }).catch((e: unknown) => e);
    expect(replay).toBeInstanceOf(BootstrapTokenError);
    expect((replay as BootstrapTokenError).reason).toBe('unknown');
  });
});
