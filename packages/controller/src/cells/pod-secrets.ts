// The secrets applied with a pod, as kept in its record: sealed (security/secret-box.ts) when
// the controller has an encryption key, which it always has with mTLS; in the clear only for an
// insecure-dev controller configured without one. Records written in the clear by an older
// controller are still read, and sealed at their next write.
import type { PodRecord } from './schema.js';
import { isSealedSecrets, type SealedSecrets, type SecretBox } from '../security/secret-box.js';

/** The resolved Secrets/ConfigMaps applied with the pod (JSON of SecretData/ConfigMapData). */
export interface PodRecordWithData extends PodRecord {
  /** Plaintext secrets: only without an encryption key (or from before secrets were sealed). */
  secrets?: Record<string, unknown>;
  sealedSecrets?: SealedSecrets;
  configMaps?: Record<string, unknown>;
}

/** The pod's secrets in the clear. `storeKey` is the record's key (the seal's context). */
export function readPodSecrets(rec: PodRecordWithData, storeKey: string, box: SecretBox | undefined): Record<string, unknown> {
  if (rec.sealedSecrets !== undefined) {
    if (!isSealedSecrets(rec.sealedSecrets)) throw new Error(`${storeKey}: sealedSecrets is not a sealed secrets record`);
    if (!box) throw new Error(`${storeKey}: the pod's secrets are sealed but no encryption key is configured (security.encryptionKeyFile)`);
    return box.open(rec.sealedSecrets, storeKey);
  }
  return rec.secrets ?? {};
}

/** Sets the pod's secrets on a record (sealed when there is a key); returns the record. */
export function writePodSecrets(rec: PodRecordWithData, secrets: Record<string, unknown>, storeKey: string, box: SecretBox | undefined): PodRecordWithData {
  delete rec.secrets;
  delete rec.sealedSecrets;
  if (Object.keys(secrets).length === 0) return rec;
  if (box) rec.sealedSecrets = box.seal(secrets, storeKey);
  else rec.secrets = secrets;
  return rec;
}
