// The controller's etcd client over TLS, against a real etcd started with --cert-file,
// --key-file, --trusted-ca-file and --client-cert-auth: from the YAML configuration
// (store.tls) through the daemon's store mapping to a working store, and every way it can be
// wrong refused with the field named.
import { randomUUID } from 'node:crypto';
import { startEtcd, type EtcdServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config.js';
import { storeConfig } from '../../src/daemon.js';
import { openStore, type Store } from '../../src/store/index.js';

const log = pino({ level: 'silent' });
let etcd: EtcdServer;
beforeAll(async () => {
  etcd = await startEtcd({ tls: true });
});
afterAll(async () => {
  await etcd?.stop();
});

function config(store: Record<string, unknown>) {
  return parseConfig({ controllerId: 'tls-test', security: { encryptionKeyEnv: 'CELLO_TEST_UNUSED_KEY' }, store: { kind: 'etcd', ...store } }, 'test.yaml');
}

describe('etcd store over TLS', () => {
  it('reaches an etcd that requires client certificates, configured with store.tls', async () => {
    const t = etcd.tls!;
    const c = config({ endpoints: etcd.endpoints, prefix: `/t-${randomUUID()}/`, tls: { caFile: t.caFile, certFile: t.clientCertFile, keyFile: t.clientKeyFile } });
    const store: Store = await openStore(storeConfig(c, log));
    try {
      const rev = await store.put('k', { over: 'tls' });
      expect(await store.get('k')).toEqual({ key: 'k', value: { over: 'tls' }, modRevision: rev });
    } finally {
      await store.close();
    }
  });

  it('is refused by etcd without a client certificate, with one from another CA, or without the CA', async () => {
    const t = etcd.tls!;
    const attempts: Array<[string, Record<string, unknown>]> = [
      ['no client certificate', { tls: { caFile: t.caFile } }],
      ["another CA's client certificate", { tls: { caFile: t.caFile, certFile: t.rogueCertFile, keyFile: t.rogueKeyFile } }],
      ['no store.tls (system roots do not know this CA)', {}],
    ];
    for (const [what, extra] of attempts) {
      const c = config({ endpoints: etcd.endpoints, requestTimeoutMs: 2000, ...extra });
      await expect(openStore(storeConfig(c, log)), what).rejects.toThrow(/cannot reach etcd at https:\/\/127\.0\.0\.1/);
    }
  });

  it('names the field when the TLS configuration cannot work', async () => {
    const t = etcd.tls!;
    expect(() => config({ endpoints: etcd.endpoints, tls: { caFile: t.caFile, certFile: t.clientCertFile } })).toThrow(ConfigError);
    expect(() => config({ endpoints: etcd.endpoints, tls: { caFile: t.caFile, certFile: t.clientCertFile } })).toThrow(/store\.tls: certFile and keyFile go together/);
    const open = (store: Record<string, unknown>) => openStore(storeConfig(config(store), log));
    await expect(open({ endpoints: ['http://127.0.0.1:2379'], tls: { caFile: t.caFile } })).rejects.toThrow(/store\.tls is set but store\.endpoints are http:\/\//);
    await expect(open({ endpoints: ['http://127.0.0.1:2379', 'https://127.0.0.1:2380'] })).rejects.toThrow(/store\.endpoints mixes http:\/\/ and https:\/\//);
    await expect(open({ endpoints: etcd.endpoints, tls: { caFile: '/nonexistent/ca.pem' } })).rejects.toThrow(/store\.tls\.caFile: cannot read \/nonexistent\/ca\.pem: ENOENT/);
    await expect(open({ endpoints: etcd.endpoints, tls: { caFile: t.clientKeyFile } })).rejects.toThrow(/store\.tls\.caFile: .* is not a PEM certificate/);
    await expect(open({ endpoints: etcd.endpoints, tls: { caFile: t.caFile, certFile: t.clientCertFile, keyFile: t.rogueKeyFile } })).rejects.toThrow(
      /store\.tls\.keyFile: .*rogue\.key is not the key of store\.tls\.certFile/,
    );
    // A password in clear text is fine on loopback (development), refused across the network.
    await expect(open({ endpoints: ['http://10.255.255.1:2379'], auth: { username: 'u', password: 'p' } })).rejects.toThrow(
      /store\.auth: the etcd password would cross the network in clear text to http:\/\/10\.255\.255\.1:2379/,
    );
  });
});
