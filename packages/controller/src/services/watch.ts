// One watch of Services and one of EndpointSlices for the whole controller (never one per
// cell), feeding ClusterServices (which ignores writes that change nothing a cell uses).
import type { Logger } from 'pino';
import { Informer } from '../k8s/client/informer.js';
import type { KubeRest } from '../k8s/client/rest.js';
import { errMsg } from '../util/errors.js';
import type { ClusterServices } from './cluster-services.js';
import { toClusterEndpointSlice, toClusterService, type KubeEndpointSlice, type KubeService } from './from-kube.js';

export interface ServiceWatch {
  stop(): Promise<void>;
}

export function watchClusterServices(rest: KubeRest, into: ClusterServices, log: Logger): ServiceWatch {
  const services = new Informer<KubeService & { metadata: { name: string } }>(
    rest,
    '/api/v1/services',
    '',
    (key, obj) => into.setService(key, obj ? toClusterService(obj) : undefined),
    (err) => log.warn({ err: errMsg(err) }, 'watching Services failed; retrying'),
  );
  const slices = new Informer<KubeEndpointSlice & { metadata: { name: string } }>(
    rest,
    '/apis/discovery.k8s.io/v1/endpointslices',
    '',
    (key, obj) => into.setSlice(key, obj ? toClusterEndpointSlice(obj) : undefined),
    (err) => log.warn({ err: errMsg(err) }, 'watching EndpointSlices failed; retrying'),
  );
  services.start();
  slices.start();
  void Promise.all([services.hasSynced, slices.hasSynced]).then(() => {
    into.markSynced();
    log.info(into.counts(), 'cluster Services listed');
  });
  return {
    async stop() {
      await Promise.all([services.stop(), slices.stop()]);
    },
  };
}
