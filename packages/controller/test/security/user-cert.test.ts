// User certificates (controller issue-user): their own identity kind, groups in O=, client use
// only; and `controller issue-user` reading the CA from an embedded store another process holds.
import { randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { waitFor } from '@cello/testkit';
import { CA_STORE_KEY, CertificateAuthority, identityOf } from '../../src/security/index.js';
import { EmbeddedStore } from '../../src/store/index.js';
import { readEmbeddedKey } from '../../src/api/auth/issue-user.js';

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const dir = mkdtempSync(join(tmpdir(), 'cello-user-cert-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('user certificates', () => {
  it('name spiffe://<td>/user/NAME, carry groups as O=, and are for clients only', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'a') });
    try {
      const ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
      const c = await ca.issueUserCertificate('alice@example.com', { groups: ['dev', 'system:masters'], ttlSeconds: 3600 });
      const x = new X509Certificate(c.certPem);
      expect(identityOf(x)).toEqual({ kind: 'user', name: 'alice@example.com', trustDomain: 'cello' });
      expect(x.subject.split('\n').filter((l) => l.startsWith('O='))).toEqual(['O=dev', 'O=system:masters']);
      expect(x.keyUsage).toEqual([CLIENT_AUTH]);
      expect(x.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
      // A user named like the controller is a user, never the controller's client identity.
      expect(identityOf((await ca.issueUserCertificate('controller')).certPem)).toEqual({ kind: 'user', name: 'controller', trustDomain: 'cello' });
      // The API's serving certificate serves only.
      expect(new X509Certificate((await ca.issueServerCertificate('controller-api', { ips: ['127.0.0.1'] })).certPem).keyUsage).toEqual([SERVER_AUTH]);
      await expect(ca.issueUserCertificate('bad name')).rejects.toThrow(/name must be 1-128 characters/);
      await expect(ca.issueUserCertificate('bob', { groups: ['a,O=system:masters'] })).rejects.toThrow(/groups\[0\] must be/);
    } finally {
      await store.close();
    }
  });

  it("the CA record is found in a locked embedded store's files, after writes on top of it", async () => {
    const key = randomBytes(32);
    // A small compaction threshold: the CA ends up in a snapshot, later writes in the WAL.
    const store = await EmbeddedStore.open({ dir: join(dir, 'b'), compactBytes: 2048 });
    try {
      const ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: key });
      for (let i = 0; i < 200; i++) await store.put(`pods/default/p${i}`, { i, pad: 'x'.repeat(64) });
      // The CA's record now lives in a snapshot, and later writes in the WAL on top of it.
      await waitFor('a compaction snapshot', () => existsSync(join(dir, 'b', 'snapshot.json')), { timeoutMs: 10_000 });
      const again = await CertificateAuthority.fromStoredRecord(readEmbeddedKey(join(dir, 'b'), CA_STORE_KEY), key);
      expect(again.certPem).toBe(ca.certPem);
      const c = await again.issueUserCertificate('carol');
      expect(new X509Certificate(c.certPem).checkIssued(new X509Certificate(ca.certPem))).toBe(true);
      expect(readEmbeddedKey(join(dir, 'b'), 'no/such/key')).toBeUndefined();
    } finally {
      await store.close();
    }
  });
});
