export { freePort } from './net.js';
export { waitFor } from './wait.js';
export { startMoto, type MotoServer } from './moto.js';
export { startEtcd, type EtcdServer } from './etcd.js';
