// One watch of Services and one of EndpointSlices for the whole controller (never one per
// cell), feeding ClusterServices (which ignores writes that change nothing a cell uses).
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { Informer } from '../k8s/client/informer.js';
import { isConflict, type KubeRest } from '../k8s/client/rest.js';
import { errMsg } from '../util/errors.js';
import type { ClusterServices } from './cluster-services.js';
import { refusedOnCells, toClusterEndpointSlice, toClusterService, type KubeEndpointSlice, type KubeService } from './from-kube.js';

/** The Event's reason when cells refuse a Service (see refusedOnCells). */
export const REFUSED_REASON = 'NotServedOnCells';

export interface ServiceWatch {
  stop(): Promise<void>;
}

export function watchClusterServices(rest: KubeRest, into: ClusterServices, log: Logger): ServiceWatch {
  // One Event per Service and reason text, not one per resync or unrelated update.
  const refused = new Map<string, string>();
  const warn = (key: string, obj: KubeService | undefined) => {
    const why = obj ? refusedOnCells(obj) : undefined;
    if (why === refused.get(key)) return;
    if (why === undefined) return void refused.delete(key);
    refused.set(key, why);
    void recordRefusal(rest, obj!, why).catch((err: Error) => log.debug({ err: err.message, service: key }, 'event not recorded'));
  };
  const services = new Informer<KubeService & { metadata: { name: string } }>(
    rest,
    '/api/v1/services',
    '',
    (key, obj) => {
      warn(key, obj);
      into.setService(key, obj ? toClusterService(obj) : undefined);
    },
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

/**
 * The Event's name: the same for the same Service (uid), reason and message, so that every
 * controller replica, and a restarted one whose in-memory dedupe is empty, makes the same Event
 * and the API server keeps only the first (409 for the others), as client-go's EventCorrelator
 * folds identical events into one. A new reason text (the Service changed why) is a new Event.
 */
function refusalEventName(svc: KubeService, message: string): string {
  const key = createHash('sha256')
    .update(`${svc.metadata.uid ?? svc.metadata.name}\0${REFUSED_REASON}\0${message}`)
    .digest('hex')
    .slice(0, 16);
  return `${svc.metadata.name}.${key}`;
}

async function recordRefusal(rest: KubeRest, svc: KubeService, message: string): Promise<void> {
  const ns = svc.metadata.namespace ?? 'default';
  const ts = new Date().toISOString();
  try {
    await rest.post(`/api/v1/namespaces/${ns}/events`, {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: refusalEventName(svc, message), namespace: ns },
      involvedObject: { apiVersion: 'v1', kind: 'Service', name: svc.metadata.name, namespace: ns, uid: svc.metadata.uid, resourceVersion: svc.metadata.resourceVersion },
      type: 'Warning',
      reason: REFUSED_REASON,
      message,
      source: { component: 'cello-controller' },
      reportingComponent: 'cello-controller',
      reportingInstance: 'cello-controller',
      firstTimestamp: ts,
      lastTimestamp: ts,
      count: 1,
    });
  } catch (err) {
    if (isConflict(err)) return; // another replica (or this one before a restart) said it already
    throw err;
  }
}
