export { freePort } from './net.js';
export { waitExit, waitFor } from './wait.js';
export { startMoto, type MotoServer } from './moto.js';
export { startImdsTestDouble, type ImdsTestDouble } from './moto-imds.js';
export { startEtcd, type EtcdServer, type EtcdTlsFiles } from './etcd.js';
export { startRegistry, requireCommand } from './registry.js';
export type { RegistryServer, RegistryTokenAuth, StartRegistryOptions } from './registry.js';
export { buildFixtures, pushLayoutTag, pushBusybox, pushFixtures, pushBlob, pushImage, pushPause } from './fixtures.js';
export type { Fixtures, FixtureSet, PushOptions, PushedFixtures, RawLayer } from './fixtures.js';
export {
  startKubeApiserver,
  startMetricsServer,
  hostAddress,
  kubeBinaries,
  KUBE_CONTROLLERS,
  startApiServerRelay,
  type ApiServerRelay,
  type KubeApiserver,
  type IssuedCert,
  type MetricsServer,
} from './kube.js';
export { kubeconfigFor } from './kube.js';
export { deployClusterDns, pushCoreDns, corednsBuild, type ClusterDns, type CoreDnsBuild, type DeployClusterDnsOptions } from './coredns.js';
export { apiClientLayout, pushApiClient } from './apiclient.js';
export { startNetLab, type NetLab } from './netlab.js';
export { makeTestPki, type TestPki } from './pki.js';
export { startRequestLog, type RequestLog, type LoggedRequest } from './request-log.js';
export { criTools, type CriTools } from './cri-tools.js';
export { startTokenIssuer, type TokenIssuer } from './token-issuer.js';
export { startGceFake, type GceFake, type GceFakeOptions, type InsertFault, type StaticTokenAuthClient } from './gce-fake.js';
export { startKubelet, kubeletBinary, type Kubelet, type KubeletTaint, type StartKubeletOptions } from './kubelet.js';
export { startContainerd, type Containerd, type StartContainerdOptions } from './containerd.js';
