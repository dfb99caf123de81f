// The support bundle's parts on their own: what redactSecrets takes out (and what it leaves),
// and that the tar writer's archives are read back by the system's tar, byte for byte.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { redactSecrets } from '../../src/support/redact.js';
import { tarGz } from '../../src/support/tar.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-redact-tar-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('redactSecrets', () => {
  it('redacts secret-naming keys at any depth and PEM private keys anywhere, keeping the rest', () => {
    const pem = '-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n';
    const out = redactSecrets({
      store: { kind: 'etcd', auth: { username: 'root', password: 'hunter2' } },
      registries: { 'r:5000': { client: { certPem: 'CERT', keyPem: pem } } },
      security: { encryptionKeyFile: '/etc/cello/key', encryptionKey: 'abc' },
      list: [{ bearerToken: 't' }, { note: pem }, { clientSecret: 's', name: 'kept' }],
      sealedSecrets: { iv: 'x' },
      nested: { deeper: { evenDeeper: { password: 'p' } } },
      count: 3,
    });
    expect(out).toEqual({
      store: { kind: 'etcd', auth: '[redacted]' },
      registries: { 'r:5000': { client: { certPem: 'CERT', keyPem: '[redacted]' } } },
      security: { encryptionKeyFile: '/etc/cello/key', encryptionKey: '[redacted]' },
      list: [{ bearerToken: '[redacted]' }, { note: '[redacted]' }, { clientSecret: '[redacted]', name: 'kept' }],
      sealedSecrets: '[redacted]',
      nested: { deeper: { evenDeeper: { password: '[redacted]' } } },
      count: 3,
    });
  });
});

describe('tarGz', () => {
  it('writes an archive tar reads back: names, contents (empty and multi-block), modes', async () => {
    const big = 'x'.repeat(1500) + '\n';
    const file = join(dir, 'a.tar.gz');
    writeFileSync(
      file,
      await tarGz(
        [
          { name: 'd/one.txt', data: 'hello\n' },
          { name: 'd/empty', data: '' },
          { name: 'd/sub/big.txt', data: Buffer.from(big) },
        ],
        1_700_000_000,
      ),
    );
    expect(execFileSync('tar', ['-tzvf', file], { encoding: 'utf8' })).toMatch(/^-rw-r--r-- .* 6 2023-11-14 \d\d:\d\d d\/one\.txt$/m);
    execFileSync('tar', ['-xzf', file, '-C', dir]);
    expect(readFileSync(join(dir, 'd/one.txt'), 'utf8')).toBe('hello\n');
    expect(readFileSync(join(dir, 'd/empty'), 'utf8')).toBe('');
    expect(readFileSync(join(dir, 'd/sub/big.txt'), 'utf8')).toBe(big);
  });

  it('keeps a name longer than the 100 bytes of a ustar header (in a PAX header)', async () => {
    const name = `long/${'n'.repeat(150)}.log`;
    const file = join(dir, 'long.tar.gz');
    writeFileSync(file, await tarGz([{ name, data: 'kept\n' }]));
    expect(execFileSync('tar', ['-tzf', file], { encoding: 'utf8' })).toBe(`${name}\n`);
    execFileSync('tar', ['-xzf', file, '-C', dir]);
    expect(readFileSync(join(dir, name), 'utf8')).toBe('kept\n');
  });
});
