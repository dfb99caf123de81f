// The controller's store: pick a backend from configuration. Everything else talks to `Store`.
import { EmbeddedStore, type EmbeddedStoreOptions } from './embedded.js';
import { EtcdStore, type EtcdStoreOptions } from './etcd.js';
import type { Store } from './store.js';

export * from './store.js';
export { EmbeddedStore, type EmbeddedStoreOptions } from './embedded.js';
export { EtcdStore, type EtcdStoreOptions } from './etcd.js';
export { StoreLockedError } from './lockfile.js';

export type StoreConfig = ({ kind: 'embedded' } & EmbeddedStoreOptions) | ({ kind: 'etcd' } & EtcdStoreOptions);

export async function openStore(config: StoreConfig): Promise<Store> {
  switch (config?.kind) {
    case 'embedded':
      return EmbeddedStore.open(config);
    case 'etcd':
      return EtcdStore.open(config);
    default:
      throw new TypeError(`store.kind must be "embedded" or "etcd", got ${JSON.stringify((config as { kind?: unknown })?.kind)}`);
  }
}
