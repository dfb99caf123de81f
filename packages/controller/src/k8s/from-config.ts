// Starts the virtual node from the controller's configuration (the daemon's entry point).
import { splitHostPort } from '@cello/proto';
import type { CellProvider, InstanceType } from '../providers/provider.js';
import { nodeCapacity, podsUsage } from './node/capacity.js';
import type { KPod } from './node/manifest.js';
import type { ServiceView } from './node/service-env.js';
import type { Logger } from '../obs/logger.js';
import type { AgentAccess } from '../agents/pool.js';
import type { Registry } from 'prom-client';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { defaultInternalIP, leaderIdentity, readKubeletTls, type KubernetesConfig } from './config.js';
import type { NodeCapacity } from './node/node.js';
import { startVirtualNode, type VirtualNodeHandle } from './virtual-node.js';

/**
 * What the node offers when the configuration names nothing: as many pods as the provider may
 * run cells (maxCells, else 100), each up to the largest instance type, so the scheduler never
 * places a pod that no instance type could hold.
 */
export function derivedCapacity(types: InstanceType[], maxCells?: number): NodeCapacity {
  const pods = maxCells ?? 100;
  const cpu = Math.max(0, ...types.map((t) => t.vcpus));
  const mem = Math.max(0, ...types.map((t) => t.memoryMiB));
  const gpus = Math.max(0, ...types.map((t) => t.gpus));
  return {
    cpu: String(cpu * pods),
    memory: `${mem * pods}Mi`,
    pods: String(pods),
    ...(gpus ? { 'nvidia.com/gpu': String(gpus * pods) } : {}),
  };
}

/** What the provider has cell images for; what its types are when it cannot say. */
async function servedArchitectures(provider: Pick<CellProvider, 'architectures'> | undefined, types: InstanceType[], log: Logger): Promise<string[]> {
  const fromTypes = [...new Set(types.map((t) => t.arch))].sort();
  if (!provider?.architectures) return fromTypes;
  try {
    return await provider.architectures();
  } catch (err) {
    log.warn({ err: (err as Error).message }, "provider architectures unavailable; the node names its instance types' ones");
    return fromTypes;
  }
}

export async function startVirtualNodeFromConfig(
  k: KubernetesConfig,
  o: {
    controllerAddress: string;
    controllerCredentials: ChannelCredentials;
    providerName: string;
    instanceTypes: InstanceType[];
    maxCells?: number;
    /** Its capacity() (quota, host resources) sizes the node unless the configuration fixes it. */
    provider?: Pick<CellProvider, 'capacity' | 'architectures'>;
    agents?: AgentAccess;
    /** The cluster's Services as streamed to cells (KUBERNETES_SERVICE_* of pods). */
    services?: ServiceView;
    metricsRegistry?: Registry;
    log: Logger;
  },
): Promise<VirtualNodeHandle> {
  const kubeletListen = splitHostPort(k.kubelet.listen);
  const tls = readKubeletTls(k);
  const fixed: NodeCapacity | undefined = k.capacity ? { cpu: k.capacity.cpu, memory: k.capacity.memory, pods: String(k.capacity.pods) } : undefined;
  const derived = derivedCapacity(o.instanceTypes, o.maxCells);
  const provider = o.provider;
  let last: { capacity: NodeCapacity; allocatable: NodeCapacity } | undefined;
  const capacity = async (pods: KPod[]) => {
    if (fixed) return { capacity: fixed, allocatable: fixed };
    if (!provider?.capacity) return { capacity: derived, allocatable: derived };
    try {
      last = nodeCapacity(await provider.capacity(), o.instanceTypes, podsUsage(pods));
    } catch (err) {
      // The last figures stand (else the derived ones) until the provider answers again.
      o.log.warn({ err: (err as Error).message }, 'provider capacity unavailable; node capacity unchanged');
    }
    return last ?? { capacity: derived, allocatable: derived };
  };
  return startVirtualNode({
    nodeName: k.nodeName,
    ...(k.kubeconfig ? { kubeconfig: k.kubeconfig } : {}),
    controllerAddress: o.controllerAddress,
    controllerCredentials: o.controllerCredentials,
    providerName: o.providerName,
    internalIP: k.internalIP ?? defaultInternalIP(),
    kubelet: {
      listenHost: kubeletListen.host,
      port: kubeletListen.port,
      ...tls,
      ...(k.kubelet.allowedCommonNames.length ? { allowedCNs: k.kubelet.allowedCommonNames } : {}),
    },
    taint: k.taint,
    labels: k.labels,
    architectures: await servedArchitectures(o.provider, o.instanceTypes, o.log),
    capacity,
    statusSeconds: k.nodeStatusSeconds,
    tokenRefreshRatio: k.tokenRefreshRatio,
    dataSyncSeconds: k.dataSyncSeconds,
    ...(k.podApiServer ? { podApiServer: k.podApiServer } : {}),
    ...(o.services ? { services: o.services } : {}),
    ...(k.leaderElection.enabled
      ? { leaderElection: { namespace: k.leaderElection.namespace, name: k.leaderElection.name, identity: leaderIdentity(), leaseSeconds: k.leaderElection.leaseSeconds } }
      : {}),
    ...(o.agents ? { agents: o.agents } : {}),
    ...(o.metricsRegistry ? { metricsRegistry: o.metricsRegistry } : {}),
    log: o.log,
  });
}
