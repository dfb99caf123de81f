// Secrets out of what a support bundle ships: every value under a key that names a secret
// (passwords, tokens, keys, credentials, pod secrets, user data), and any string holding a PEM
// private key wherever it sits. Paths to key files stay: they help, and are not the key.
import { REDACT_CENSOR } from '@cello/proto';

const SECRET_KEY =
  /^(password|passwd|token|identitytoken|authorization|auth|keypem|privatekey|encryptionkey|secrets?|secretaccesskey|accesskeyid|sessiontoken|registrycredentials|userdata|credentials|data|stringdata)$/i;
const SECRET_SUFFIX = /(password|tokens?|secrets?|apikey)$/i;
const PRIVATE_KEY = /-----BEGIN [A-Z ]*PRIVATE KEY-----/;

export function redactSecrets(value: unknown, key = ''): unknown {
  if (value === null || value === undefined) return value;
  if (key && (SECRET_KEY.test(key) || SECRET_SUFFIX.test(key))) return REDACT_CENSOR;
  if (typeof value === 'string') return PRIVATE_KEY.test(value) ? REDACT_CENSOR : value;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return REDACT_CENSOR;
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v));
  if (value instanceof Date) return value;
  if (typeof value === 'object') return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, redactSecrets(v, k)]));
  return value;
}
