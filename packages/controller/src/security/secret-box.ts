// Pod secrets at rest, envelope style: each write seals the secret data under a fresh random
// data key (AES-256-GCM), and the data key is sealed under the configured key — the same one
// that protects the CA key (security.encryptionKeyFile / encryptionKeyEnv). A store backup or an
// etcd snapshot then holds no secret in the clear, and re-keying the configured key would only
// need the small wrapped data keys rewritten. Both seals carry the record's key as AAD, so a
// sealed blob copied into another pod's record does not open there.
import { randomBytes } from 'node:crypto';
import { parseEncryptionKey, seal, unseal, type Sealed } from './sealed.js';

export interface SealedSecrets {
  v: 1;
  /** The data key, sealed under the configured key. */
  dek: Sealed;
  /** JSON of the secrets, sealed under the data key. */
  data: Sealed;
}

export function isSealedSecrets(x: unknown): x is SealedSecrets {
  return typeof x === 'object' && x !== null && (x as SealedSecrets).v === 1 && typeof (x as SealedSecrets).dek === 'object' && typeof (x as SealedSecrets).data === 'object';
}

export class SecretBox {
  private readonly kek: Buffer;

  /** `key`: 32 bytes, base64 or hex, as for the CA key; a wrong one is refused naming the field. */
  constructor(key: string | Buffer) {
    this.kek = parseEncryptionKey(key);
  }

  /** `context` names what the secrets belong to (the pod's store key). */
  seal(secrets: Record<string, unknown>, context: string): SealedSecrets {
    const dek = randomBytes(32);
    try {
      const plain = Buffer.from(JSON.stringify(secrets), 'utf8');
      const data = seal(dek, plain, `cello-secrets/v1/${context}`);
      plain.fill(0);
      return { v: 1, dek: seal(this.kek, dek, `cello-secrets-dek/v1/${context}`), data };
    } finally {
      dek.fill(0);
    }
  }

  open(s: SealedSecrets, context: string): Record<string, unknown> {
    const dek = unseal(this.kek, s.dek, `cello-secrets-dek/v1/${context}`, `the data key of the secrets of ${context}`);
    try {
      return JSON.parse(unseal(dek, s.data, `cello-secrets/v1/${context}`, `the secrets of ${context}`).toString('utf8')) as Record<string, unknown>;
    } finally {
      dek.fill(0);
    }
  }
}
