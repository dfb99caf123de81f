// The virtual node: the Node object this controller presents to the cluster, its status, and
// the heartbeat Lease in kube-node-lease. Ready reflects whether the controller core answers
// (the probe given by the caller), so a controller that cannot act shows NotReady and the
// cluster stops sending it pods.
import type { KubeRest } from '../client/rest.js';
import { isConflict, isNotFound } from '../client/rest.js';
// A Node carries one kubernetes.io/arch; this prefix makes one label per architecture its cells can have.
import { ARCH_LABEL_PREFIX } from '../../selection/architectures.js';

export const VIRTUAL_NODE_TAINT_KEY = 'virtual-kubelet.io/provider';

/**
 * The one architecture a Node may name (kubernetes.io/arch, nodeInfo.architecture) when cells
 * come in several: amd64 when it is among them, since that is what images without a multi-arch
 * index and charts pinning an arch mostly mean; pods that want another select its
 * cello.dev/arch-* label, which the controller's selection honours as well (docs/architectures.md).
 */
export function nodeArchitecture(archs: readonly string[]): string {
  return archs.includes('amd64') || archs.length === 0 ? 'amd64' : archs[0]!;
}

export interface NodeCapacity {
  cpu: string;
  memory: string;
  pods: string;
  'ephemeral-storage'?: string;
  'nvidia.com/gpu'?: string;
}

export interface NodeOptions {
  nodeName: string;
  providerName: string;
  /** The address the API server uses to reach the kubelet API. */
  internalIP: string;
  kubeletPort: number;
  /** Taint pods must tolerate; undefined: no taint. */
  taint?: { key: string; value: string; effect: 'NoSchedule' | 'NoExecute' | 'PreferNoSchedule' };
  labels?: Record<string, string>;
  /** The architectures the provider can launch cells of; the Node's arch is chosen from them (nodeArchitecture). */
  architectures?: readonly string[];
  capacity: () => Promise<{ capacity: NodeCapacity; allocatable: NodeCapacity }>;
  /** Resolves with undefined when the controller core is healthy, else with why it is not. */
  health: () => Promise<string | undefined>;
  version: string;
  /** Seconds between Lease renewals (kubelet: 10). */
  leaseSeconds?: number;
  /** Seconds between full status updates (kubelet: 60 when nothing changes). */
  statusSeconds?: number;
  onError: (what: string, err: unknown) => void;
}

interface KNode {
  metadata: { name: string; resourceVersion?: string; labels?: Record<string, string> };
  spec?: { taints?: { key: string; value?: string; effect: string }[] };
  status?: { conditions?: { type: string; status: string }[] };
}

export class VirtualNode {
  private timers: NodeJS.Timeout[] = [];
  private readonly started = new Date().toISOString();
  private lastReady?: string;
  private readyTransition = new Date().toISOString();
  private stopped = false;

  constructor(
    private readonly rest: KubeRest,
    readonly o: NodeOptions,
  ) {}

  labels(): Record<string, string> {
    const archs = this.o.architectures ?? ['amd64'];
    const arch = nodeArchitecture(archs);
    return {
      type: 'virtual-kubelet',
      'kubernetes.io/role': 'agent',
      'node.kubernetes.io/role': 'agent',
      'kubernetes.io/hostname': this.o.nodeName,
      'kubernetes.io/os': 'linux',
      'kubernetes.io/arch': arch,
      'beta.kubernetes.io/os': 'linux',
      'beta.kubernetes.io/arch': arch,
      ...Object.fromEntries(archs.map((a) => [`${ARCH_LABEL_PREFIX}${a}`, 'true'])),
      'cello.dev/provider': this.o.providerName,
      'node.kubernetes.io/exclude-from-external-load-balancers': 'true',
      ...(this.o.labels ?? {}),
    };
  }

  private async status(): Promise<Record<string, unknown>> {
    const now = new Date().toISOString();
    const why = await this.o.health().catch((err: Error) => `health check failed: ${err.message}`);
    const ready = why ? 'False' : 'True';
    if (ready !== this.lastReady) {
      this.lastReady = ready;
      this.readyTransition = now;
    }
    const { capacity, allocatable } = await this.o.capacity();
    const cond = (type: string, status: string, reason: string, message: string, transition = this.started) => ({
      type,
      status,
      reason,
      message,
      lastHeartbeatTime: now,
      lastTransitionTime: transition,
    });
    return {
      capacity,
      allocatable,
      conditions: [
        cond('Ready', ready, ready === 'True' ? 'KubeletReady' : 'ControllerNotReady', why ?? 'the Cello controller is ready to run pods on cells', this.readyTransition),
        cond('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'each pod runs on its own cell'),
        cond('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'each pod runs on its own cell'),
        cond('PIDPressure', 'False', 'KubeletHasSufficientPID', 'each pod runs on its own cell'),
        cond('NetworkUnavailable', 'False', 'RouteCreated', 'cells are reachable'),
      ],
      addresses: [
        { type: 'InternalIP', address: this.o.internalIP },
        { type: 'Hostname', address: this.o.nodeName },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: this.o.kubeletPort } },
      nodeInfo: {
        machineID: this.o.nodeName,
        systemUUID: this.o.nodeName,
        bootID: this.started,
        kernelVersion: '',
        osImage: 'Cello cells',
        containerRuntimeVersion: `cello://${this.o.version}`,
        kubeletVersion: `v1.34.0-cello-${this.o.version}`,
        kubeProxyVersion: '',
        operatingSystem: 'linux',
        architecture: nodeArchitecture(this.o.architectures ?? ['amd64']),
      },
    };
  }

  /** Creates the Node (or adopts an existing one), then starts the heartbeat. */
  async register(): Promise<void> {
    const path = `/api/v1/nodes/${this.o.nodeName}`;
    const taints = this.o.taint ? [this.o.taint] : [];
    let existing: KNode | undefined;
    try {
      existing = await this.rest.get<KNode>(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (!existing) {
      try {
        await this.rest.post('/api/v1/nodes', {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: this.o.nodeName, labels: this.labels() },
          spec: { taints },
        });
      } catch (err) {
        if (!isConflict(err)) throw err;
      }
    } else {
      // Keep taints others added (cordon, NoExecute from the node lifecycle controller); set ours.
      const others = (existing.spec?.taints ?? []).filter((t) => t.key !== (this.o.taint?.key ?? VIRTUAL_NODE_TAINT_KEY));
      await this.rest.strategicPatch(path, { metadata: { labels: this.labels() }, spec: { $retainKeys: undefined, taints: [...others, ...taints] } });
    }
    await this.updateStatus();
    await this.renewLease();
    const every = (s: number, fn: () => Promise<void>, what: string) => {
      const t = setInterval(() => {
        if (!this.stopped) fn().catch((err) => this.o.onError(what, err));
      }, s * 1000);
      t.unref();
      this.timers.push(t);
    };
    // A Lease renewal and a status update are both heartbeats that must happen on a clock: the
    // node lifecycle controller marks a node NotReady when they stop.
    every(this.o.leaseSeconds ?? 10, () => this.renewLease(), 'lease renewal');
    every(this.o.statusSeconds ?? 30, () => this.updateStatus(), 'node status update');
  }

  private capacityTimer: NodeJS.Timeout | undefined;

  /** Pods came or went: a status update (with fresh capacity) within a second or two, coalesced. */
  capacityChanged(delayMs = 1500): void {
    if (this.stopped || this.capacityTimer) return;
    this.capacityTimer = setTimeout(() => {
      this.capacityTimer = undefined;
      if (!this.stopped) this.updateStatus().catch((err) => this.o.onError('node status update', err));
    }, delayMs);
    this.capacityTimer.unref();
  }

  async updateStatus(): Promise<void> {
    await this.rest.strategicPatch(`/api/v1/nodes/${this.o.nodeName}/status`, { status: await this.status() });
  }

  async renewLease(): Promise<void> {
    const path = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${this.o.nodeName}`;
    const now = new Date().toISOString().replace('Z', '000Z'); // MicroTime
    const spec = { holderIdentity: this.o.nodeName, leaseDurationSeconds: 40, renewTime: now };
    try {
      await this.rest.mergePatch(path, { spec });
    } catch (err) {
      if (!isNotFound(err)) throw err;
      // Owned by the Node, so deleting the Node removes its Lease.
      const node = await this.rest.get<{ metadata: { uid: string } }>(`/api/v1/nodes/${this.o.nodeName}`);
      await this.rest.post('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: {
          name: this.o.nodeName,
          namespace: 'kube-node-lease',
          ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: this.o.nodeName, uid: node.metadata.uid }],
        },
        spec,
      });
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.capacityTimer) clearTimeout(this.capacityTimer);
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }
}
