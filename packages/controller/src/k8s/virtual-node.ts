// Assembles the virtual node: the Node and its heartbeat, the pod sync, and the kubelet API,
// all driving the controller core through its gRPC API. With leader election on, only the
// replica holding the Lease runs the node and the pod sync; every replica serves the kubelet
// API (it only relays streams to cells), so the API server reaches whichever it is sent to.
import type { Logger } from '../obs/logger.js';
import type { AgentAccess } from '../agents/pool.js';
import { VERSION } from '../version.js';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { Controller } from './controller-client.js';
import { KubeletServer } from './kubelet/server.js';
import { LeaderElector, type LeaderElectionOptions } from './client/leader.js';
import { VirtualNode, VIRTUAL_NODE_TAINT_KEY, type NodeCapacity } from './node/node.js';
import { PodSync } from './node/pods.js';
import type { KPod } from './node/manifest.js';
import type { ServiceView } from './node/service-env.js';
import { KubeRest, loadKubeConfig } from './client/rest.js';
import { SpdyStreams } from './kubelet/streams.js';
import { VirtualNodeMetrics } from './metrics.js';
import type { Registry } from 'prom-client';

export interface VirtualNodeOptions {
  nodeName: string;
  /** kubeconfig path; undefined: in-cluster service account. */
  kubeconfig?: string;
  /** host:port of the controller's gRPC API. */
  controllerAddress: string;
  /** How it authenticates to the controller API (api/auth/client.ts). */
  controllerCredentials: ChannelCredentials;
  providerName: string;
  /** Address the API server reaches the kubelet API at (node InternalIP). */
  internalIP: string;
  kubelet: { listenHost: string; port: number; cert: string; key: string; clientCA: string; allowedCNs?: string[] };
  /** Default: virtual-kubelet.io/provider=cello:NoSchedule; null: no taint. */
  taint?: { key: string; value: string; effect: 'NoSchedule' | 'NoExecute' | 'PreferNoSchedule' } | null;
  labels?: Record<string, string>;
  /** The architectures cells can have (the provider's cell images); default amd64. */
  architectures?: readonly string[];
  /** What the node offers, given the pods bound to it (see capacity.ts); asked on every status update. */
  capacity: (pods: KPod[]) => Promise<{ capacity: NodeCapacity; allocatable: NodeCapacity }>;
  /** Where pods reach the API server, when configured; default: the `default/kubernetes` Service (see service-env.ts). */
  podApiServer?: { host: string; port: number };
  /** The cluster's Services as streamed to cells; without them pods get the kubeconfig's server. */
  services?: ServiceView;
  leaderElection?: LeaderElectionOptions;
  /** How cell agents are reached (the daemon's pool) for /stats/summary and /metrics/resource. */
  agents?: AgentAccess;
  /** Where the virtual node's metrics go (the controller's registry); default: a private one. */
  metricsRegistry?: Registry;
  /** Fraction of a projected token's lifetime after which it is refreshed; default 0.8. */
  tokenRefreshRatio?: number;
  /** How often running pods' Secrets and ConfigMaps are read again; default 60. */
  dataSyncSeconds?: number;
  leaseSeconds?: number;
  statusSeconds?: number;
  log: Logger;
}

export interface VirtualNodeHandle {
  kubeletPort: number;
  rest: KubeRest;
  isLeader(): boolean;
  podSync(): PodSync | undefined;
  stop(): Promise<void>;
}

export async function startVirtualNode(o: VirtualNodeOptions): Promise<VirtualNodeHandle> {
  const log = o.log;
  const rest = new KubeRest(loadKubeConfig(o.kubeconfig));
  const controller = new Controller(o.controllerAddress, o.controllerCredentials);
  const metrics = new VirtualNodeMetrics(o.metricsRegistry);
  const streams = new SpdyStreams({ controller, log: log.child({ component: 'kubelet-streams' }) });
  let sync: PodSync | undefined;
  let node: VirtualNode | undefined;
  const kubelet = new KubeletServer({
    cert: o.kubelet.cert,
    key: o.kubelet.key,
    clientCA: o.kubelet.clientCA,
    ...(o.kubelet.allowedCNs ? { allowedCNs: o.kubelet.allowedCNs } : {}),
    controller,
    rest,
    metrics,
    nodeName: o.nodeName,
    pods: () => sync?.pods() ?? [],
    ...(o.agents ? { agents: o.agents } : {}),
    log: log.child({ component: 'kubelet-api' }),
    onUpgrade: (req, socket, head, user) => streams.handle(req, socket, head, user),
  });
  const kubeletPort = await kubelet.listen(o.kubelet.listenHost, o.kubelet.port);
  const server = rest.server;
  const kubeconfigServer = { host: server.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(server.port || 443) };

  const startNode = async () => {
    node = new VirtualNode(rest, {
      nodeName: o.nodeName,
      providerName: o.providerName,
      internalIP: o.internalIP,
      kubeletPort,
      ...(o.taint === null ? {} : { taint: o.taint ?? { key: VIRTUAL_NODE_TAINT_KEY, value: 'cello', effect: 'NoSchedule' } }),
      ...(o.labels ? { labels: o.labels } : {}),
      ...(o.architectures ? { architectures: o.architectures } : {}),
      capacity: () => o.capacity(sync?.pods() ?? []),
      health: async () => {
        try {
          await controller.version(3000);
          return undefined;
        } catch (err) {
          return `the controller API does not answer: ${(err as Error).message}`;
        }
      },
      version: VERSION,
      ...(o.leaseSeconds ? { leaseSeconds: o.leaseSeconds } : {}),
      ...(o.statusSeconds ? { statusSeconds: o.statusSeconds } : {}),
      onError: (what, err) => log.warn({ err: (err as Error).message }, `${what} failed`),
    });
    await node.register();
    sync = new PodSync({
      rest,
      controller,
      metrics,
      log: log.child({ component: 'pods' }),
      nodeName: o.nodeName,
      ...(o.podApiServer ? { apiServer: o.podApiServer } : {}),
      ...(o.services ? { services: o.services } : {}),
      fallbackApiServer: kubeconfigServer,
      ...(o.tokenRefreshRatio !== undefined ? { tokenRefreshRatio: o.tokenRefreshRatio } : {}),
      ...(o.dataSyncSeconds !== undefined ? { dataSyncSeconds: o.dataSyncSeconds } : {}),
      // Pods coming and going change what the node offers: tell the scheduler soon, not in 30 s.
      onPodsChanged: () => node?.capacityChanged(),
    });
    await sync.start();
    metrics.leader.set(1);
    log.info({ node: o.nodeName, kubeletPort }, 'virtual node registered');
  };
  const stopNode = async () => {
    metrics.leader.set(0);
    node?.stop();
    node = undefined;
    const s = sync;
    sync = undefined;
    await s?.stop();
  };

  let elector: LeaderElector | undefined;
  let transition = Promise.resolve();
  if (o.leaderElection) {
    elector = new LeaderElector(rest, o.leaderElection, (err) => log.warn({ err: (err as Error).message }, 'leader election round failed'));
    elector.run(
      () => {
        log.info({ identity: o.leaderElection!.identity }, 'leading: running the virtual node');
        transition = transition.then(startNode).catch((err: Error) => log.error({ err: err.message }, 'virtual node failed to start'));
      },
      () => {
        log.warn({ identity: o.leaderElection!.identity }, 'lost the lease: virtual node stopped');
        transition = transition.then(stopNode);
      },
    );
  } else {
    await startNode();
  }

  return {
    kubeletPort,
    rest,
    isLeader: () => (elector ? elector.isLeader() : true),
    podSync: () => sync,
    async stop() {
      await transition.catch(() => undefined);
      await stopNode();
      await elector?.stop();
      streams.close();
      await kubelet.close();
      controller.close();
    },
  };
}
