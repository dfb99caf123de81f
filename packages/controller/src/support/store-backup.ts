// `controller backup` and `controller restore` on the store a configuration names. Backup runs
// beside a running controller (etcd: a read at one revision; embedded: its files, read without
// the lock it holds). Restore checks, before writing anything, that the backup belongs to this
// controllerId (its cells carry that tag, and the restored controller adopts them by it) and that
// the configured encryption key opens the backup's CA — a restore under another key would give
// a controller that cannot sign or unseal anything.
import type { Config } from '../config.js';
import { encryptionKey, storeConfig } from '../daemon.js';
import type { Logger } from '../obs/logger.js';
import { CA_STORE_KEY, CertificateAuthority } from '../security/ca.js';
import {
  BACKUP_FORMAT,
  BackupError,
  readBackup,
  readEmbeddedEntries,
  readStoreEntries,
  restoreEntries,
  unsealedSecretKeys,
  writeBackup,
  type StoreBackup,
} from '../store/backup.js';
import { openStore, StoreLockedError } from '../store/index.js';
import { VERSION } from '../version.js';

export interface BackupResult {
  out: string;
  entries: number;
  revision: number;
  /** Keys under pods/ cells/ events/ ... and how many of each. */
  counts: Record<string, number>;
}

export async function backupFromConfig(config: Config, out: string, o: { log: Logger; allowUnsealed?: boolean }): Promise<BackupResult> {
  let read: { revision: number; entries: StoreBackup['entries'] };
  try {
    const store = await openStore(storeConfig(config, o.log));
    try {
      read = await readStoreEntries(store);
    } finally {
      await store.close();
    }
  } catch (err) {
    if (!(err instanceof StoreLockedError) || config.store.kind !== 'embedded') throw err;
    read = readEmbeddedEntries(config.store.dir);
  }
  const unsealed = unsealedSecretKeys(read.entries);
  if (unsealed.length && !o.allowUnsealed) {
    throw new BackupError(
      `${unsealed.length} pod(s) keep their secrets unsealed in the store (${unsealed.slice(0, 3).join(', ')}): configure security.encryptionKeyFile so they are sealed, or pass --allow-unsealed-secrets to write them into the backup as they are`,
    );
  }
  await writeBackup(out, {
    format: BACKUP_FORMAT,
    createdAt: new Date().toISOString(),
    controllerVersion: VERSION,
    controllerId: config.controllerId,
    source: config.store.kind,
    revision: read.revision,
    entries: read.entries,
  });
  return { out, entries: read.entries.length, revision: read.revision, counts: countByPrefix(read.entries) };
}

export async function restoreFromConfig(config: Config, from: string, o: { log: Logger }): Promise<{ entries: number; counts: Record<string, number> }> {
  const backup = await readBackup(from);
  if (backup.controllerId !== config.controllerId) {
    throw new BackupError(
      `--from ${from}: made by controllerId ${backup.controllerId}, this configuration's controllerId is ${config.controllerId}: the cells carry the controllerId they were launched for, so restore with the same controllerId`,
    );
  }
  const ca = backup.entries.find((e) => e.key === CA_STORE_KEY);
  if (ca) {
    let key: string | undefined;
    if (config.security.encryptionKeyFile || config.security.encryptionKeyEnv) key = encryptionKey(config);
    try {
      await CertificateAuthority.fromStoredRecord(ca.value, key);
    } catch (err) {
      throw new BackupError(
        `--from ${from}: the configured encryption key (security.encryptionKeyFile/encryptionKeyEnv) does not open the backup's CA (${(err as Error).message}): restore with the key the backup's controller used`,
      );
    }
  }
  const store = await openStore(storeConfig(config, o.log)).catch((err: unknown) => {
    if (err instanceof StoreLockedError)
      throw new BackupError(
        `store.dir ${config.store.kind === 'embedded' ? config.store.dir : ''}: a running controller holds it; stop it and restore into a new, empty store.dir`,
      );
    throw err;
  });
  try {
    return { entries: await restoreEntries(store, backup), counts: countByPrefix(backup.entries) };
  } finally {
    await store.close();
  }
}

function countByPrefix(entries: StoreBackup['entries']): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const e of entries) {
    const p = e.key.split('/')[0]!;
    counts[p] = (counts[p] ?? 0) + 1;
  }
  return counts;
}
