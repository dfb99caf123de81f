// Secrets at rest (the CA private key) are sealed with AES-256-GCM under a key that comes from
// configuration, never from the store itself: whoever reads the store (a backup, an etcd
// snapshot) does not get the CA. GCM's tag makes a wrong key or a tampered record fail loudly.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CelloError } from '../errors.js';

export interface Sealed {
  alg: 'AES-256-GCM';
  iv: string;
  tag: string;
  data: string;
}

export const ENCRYPTION_KEY_FIELD = 'security.caEncryptionKey';
const GENERATE_HINT = 'generate one with: openssl rand -base64 32';

/** Parses a 32-byte key given as base64 or hex (or raw bytes), naming the field when it is wrong. */
export function parseEncryptionKey(value: unknown, field = ENCRYPTION_KEY_FIELD): Buffer {
  if (Buffer.isBuffer(value)) {
    if (value.length !== 32) throw new TypeError(`${field} must be 32 bytes, got ${value.length}`);
    return value;
  }
  if (value === undefined || value === null || value === '') {
    throw new TypeError(`${field} is required to keep the CA private key encrypted at rest (32 random bytes, base64; ${GENERATE_HINT})`);
  }
  if (typeof value !== 'string') throw new TypeError(`${field} must be a string (32 bytes as base64 or hex)`);
  const s = value.trim();
  let key: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(s)) key = Buffer.from(s, 'hex');
  else if (/^[A-Za-z0-9+/]{43}=?$/.test(s)) key = Buffer.from(s, 'base64');
  else if (/^[A-Za-z0-9_-]{43}$/.test(s)) key = Buffer.from(s, 'base64url');
  if (key?.length !== 32) {
    throw new TypeError(`${field} must be exactly 32 bytes encoded as base64 or hex (${GENERATE_HINT})`);
  }
  return key;
}

export function seal(key: Buffer, plaintext: Buffer, aad: string): Sealed {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const data = Buffer.concat([c.update(plaintext), c.final()]);
  return { alg: 'AES-256-GCM', iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), data: data.toString('base64') };
}

export class UnsealError extends CelloError {
  constructor(what: string, field = ENCRYPTION_KEY_FIELD) {
    super('Internal', `cannot decrypt ${what} with the configured ${field}: the key is wrong, or the stored record was altered`);
  }
}

export function unseal(key: Buffer, sealed: Sealed, aad: string, what: string): Buffer {
  if (sealed?.alg !== 'AES-256-GCM') throw new Error(`${what} is sealed with an unknown algorithm ${JSON.stringify(sealed?.alg)}`);
  const d = createDecipheriv('aes-256-gcm', key, Buffer.from(sealed.iv, 'base64'));
  d.setAAD(Buffer.from(aad, 'utf8'));
  d.setAuthTag(Buffer.from(sealed.tag, 'base64'));
  try {
    return Buffer.concat([d.update(Buffer.from(sealed.data, 'base64')), d.final()]);
  } catch {
    throw new UnsealError(what);
  }
}
