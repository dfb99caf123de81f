// `controller issue-user`: a certificate for a person or tool, written as a cellctl
// configuration. It needs the CA, which lives in the store sealed under the encryption key: with
// etcd the store is opened beside the running controllers; the embedded store is locked by its
// running controller, so its files are read (never written) to find the CA record, which is
// written once when the controller first starts and never changes.
import { splitHostPort } from '@cello/proto';
import { openStore, StoreLockedError } from '../../store/index.js';
import { readEmbeddedEntries } from '../../store/backup.js';
import { CA_STORE_KEY, CertificateAuthority } from '../../security/ca.js';
import type { Config } from '../../config.js';
import type { Logger } from '../../obs/logger.js';
import { encryptionKey, storeConfig } from '../../daemon.js';
import { upsertCredentials } from '../../cellctl/config.js';
import { dialAddress } from './from-config.js';

export interface IssueUserOptions {
  user: string;
  groups: string[];
  ttlSeconds: number;
  out: string;
  /** The address written into the file; default the configured api.listen. */
  server?: string;
  /** Default: the controllerId. */
  context?: string;
}

/** The latest committed value of `key` in an embedded store directory, read without its lock. */
export function readEmbeddedKey(dir: string, key: string): unknown {
  return readEmbeddedEntries(dir).entries.find((e) => e.key === key)?.value;
}

async function loadCa(config: Config, log: Logger): Promise<CertificateAuthority> {
  const key = encryptionKey(config);
  let record: unknown;
  try {
    const store = await openStore(storeConfig(config, log));
    try {
      record = (await store.get(CA_STORE_KEY))?.value;
    } finally {
      await store.close();
    }
  } catch (err) {
    if (!(err instanceof StoreLockedError) || config.store.kind !== 'embedded') throw err;
    record = readEmbeddedKey(config.store.dir, CA_STORE_KEY);
  }
  if (record === undefined) throw new Error('the store holds no CA yet: start the controller once (it creates its CA), then issue users');
  return CertificateAuthority.fromStoredRecord(record, key);
}

export async function issueUser(config: Config, o: IssueUserOptions, log: Logger): Promise<{ file: string; context: string }> {
  if (config.api.insecure) throw new Error('api.insecure: this controller serves plaintext and accepts no user certificates');
  const ca = await loadCa(config, log);
  const c = await ca.issueUserCertificate(o.user, { groups: o.groups, ttlSeconds: o.ttlSeconds });
  const context = o.context ?? config.controllerId;
  const { port } = splitHostPort(config.api.listen);
  upsertCredentials(o.out, { context, server: o.server ?? dialAddress(config.api.listen, port), trustDomain: ca.trustDomain, caPem: ca.certPem, user: o.user, ...c });
  return { file: o.out, context };
}
