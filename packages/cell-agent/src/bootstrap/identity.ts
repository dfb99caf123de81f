// The cell's identity on disk, under STATE/identity: its private key (0600, made here), the
// certificate the controller signed, the CA, and a record of the bootstrap token's use. Files
// are written atomically (temp + fsync + rename) so a crash never leaves half an identity.
import { createHash, X509Certificate } from 'node:crypto';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { spiffeIdOf } from '../server/peer-auth.js';

export interface IdentityFiles {
  dir: string;
  key: string;
  cert: string;
  ca: string;
  /** SHA-256 of each bootstrap token that was presented: a token is good once, even across restarts. */
  usedTokens: string;
}

export function identityFiles(stateDir: string): IdentityFiles {
  const dir = join(stateDir, 'identity');
  return { dir, key: join(dir, 'cell.key'), cert: join(dir, 'cell.pem'), ca: join(dir, 'ca.pem'), usedTokens: join(dir, 'used-bootstrap-tokens') };
}

export async function writeAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

export function tokenDigest(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export async function tokenWasUsed(f: IdentityFiles, token: string): Promise<boolean> {
  if (!existsSync(f.usedTokens)) return false;
  return (await readFile(f.usedTokens, 'utf8')).split('\n').includes(tokenDigest(token));
}

/** Records the use before the certificate request leaves the cell: a crash after it cannot reopen the token. */
export async function markTokenUsed(f: IdentityFiles, token: string): Promise<void> {
  await mkdir(f.dir, { recursive: true, mode: 0o700 });
  const prev = existsSync(f.usedTokens) ? await readFile(f.usedTokens, 'utf8') : '';
  await writeAtomic(f.usedTokens, `${prev}${tokenDigest(token)}\n`, 0o600);
}

/**
 * An identity from an earlier boot that is still usable: present, parseable, not expired, from
 * this CA, and naming exactly this cell in this trust domain (its one URI SAN).
 */
export async function existingIdentity(f: IdentityFiles, caPem: string, want: { cellId: string; trustDomain: string }, now = new Date()): Promise<boolean> {
  if (![f.key, f.cert, f.ca].every((p) => existsSync(p))) return false;
  try {
    const cert = new X509Certificate(await readFile(f.cert));
    const ca = new X509Certificate(await readFile(f.ca));
    if (ca.fingerprint256 !== new X509Certificate(caPem).fingerprint256) return false;
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
    const id = spiffeIdOf(cert.raw);
    if (!id.ok || id.id.uri !== `spiffe://${want.trustDomain}/cell/${want.cellId}`) return false;
    return Date.parse(cert.validTo) > now.getTime();
  } catch {
    return false;
  }
}
