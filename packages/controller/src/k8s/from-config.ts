// Starts the virtual node from the controller's configuration (the daemon's entry point).
import type { InstanceType } from '../providers/provider.js';
import type { Logger } from '../obs/logger.js';
import type { AgentAccess } from '../dispatch/agents.js';
import type { Registry } from 'prom-client';
import { defaultInternalIP, leaderIdentity, readKubeletTls, type KubernetesConfig } from './config.js';
import type { NodeCapacity } from './node.js';
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

export async function startVirtualNodeFromConfig(
  k: KubernetesConfig,
  o: { controllerAddress: string; providerName: string; instanceTypes: InstanceType[]; maxCells?: number; agents?: AgentAccess; metricsRegistry?: Registry; log: Logger },
): Promise<VirtualNodeHandle> {
  const i = k.kubelet.listen.lastIndexOf(':');
  const tls = readKubeletTls(k);
  const cap: NodeCapacity = k.capacity ? { cpu: k.capacity.cpu, memory: k.capacity.memory, pods: String(k.capacity.pods) } : derivedCapacity(o.instanceTypes, o.maxCells);
  return startVirtualNode({
    nodeName: k.nodeName,
    ...(k.kubeconfig ? { kubeconfig: k.kubeconfig } : {}),
    controllerAddress: o.controllerAddress,
    providerName: o.providerName,
    internalIP: k.internalIP ?? defaultInternalIP(),
    kubelet: {
      listenHost: k.kubelet.listen.slice(0, i).replace(/^\[|\]$/g, ''),
      port: Number(k.kubelet.listen.slice(i + 1)),
      ...tls,
      ...(k.kubelet.allowedCommonNames.length ? { allowedCNs: k.kubelet.allowedCommonNames } : {}),
    },
    taint: k.taint,
    labels: k.labels,
    capacity: async () => ({ capacity: cap, allocatable: cap }),
    tokenRefreshRatio: k.tokenRefreshRatio,
    dataSyncSeconds: k.dataSyncSeconds,
    ...(k.podApiServer ? { podApiServer: k.podApiServer } : {}),
    ...(k.leaderElection.enabled
      ? { leaderElection: { namespace: k.leaderElection.namespace, name: k.leaderElection.name, identity: leaderIdentity(), leaseSeconds: k.leaderElection.leaseSeconds } }
      : {}),
    ...(o.agents ? { agents: o.agents } : {}),
    ...(o.metricsRegistry ? { metricsRegistry: o.metricsRegistry } : {}),
    log: o.log,
  });
}
