export { freePort } from './net.js';
export { waitFor } from './wait.js';
export { startMoto, type MotoServer } from './moto.js';
export { startImdsTestDouble, type ImdsTestDouble } from './moto-imds.js';
export { startEtcd, type EtcdServer } from './etcd.js';
export { startRegistry, requireCommand } from './registry.js';
export type { RegistryServer, RegistryTokenAuth, StartRegistryOptions } from './registry.js';
export { buildFixtures, pushLayoutTag, pushBusybox, pushFixtures, pushBlob, pushImage } from './fixtures.js';
export type { Fixtures, FixtureSet, PushOptions, PushedFixtures, RawLayer } from './fixtures.js';
