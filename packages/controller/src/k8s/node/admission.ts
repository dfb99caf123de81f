// The kubelet's admission of a pod bound to its node, where it means something for a node whose
// pods each run on their own cell: host ports. The scheduler treats the virtual node as one node
// and never places two pods that want the same host port on it (its NodePorts filter); a pod
// bound by spec.nodeName skips the scheduler, so the kubelet checks the same rule before it runs
// the pod and rejects a pod that would conflict (phase Failed, reason NodePorts). The virtual node
// does the same, so a pod's fate does not depend on whether the scheduler or its author bound it
// (the StatefulSet "recreate evicted" conformance spec relies on this rejection).
import type { KPod } from './manifest.js';

interface HostPort {
  hostIP: string;
  protocol: string;
  port: number;
}

const ANY = '0.0.0.0';

interface KPort {
  hostPort?: number;
  hostIP?: string;
  protocol?: string;
}

/** The host ports a pod asks for: its containers' and its sidecars' (restartable init containers), as the NodePorts filter counts them. */
export function hostPorts(pod: KPod): HostPort[] {
  const containers = [...pod.spec.containers, ...(pod.spec.initContainers ?? []).filter((c) => c['restartPolicy'] === 'Always')];
  const out: HostPort[] = [];
  for (const c of containers) {
    for (const p of (c['ports'] as KPort[] | undefined) ?? []) {
      if (!p.hostPort || p.hostPort <= 0) continue;
      out.push({ hostIP: p.hostIP || ANY, protocol: p.protocol || 'TCP', port: p.hostPort });
    }
  }
  return out;
}

// HostPortInfo.CheckConflict: 0.0.0.0 takes the port on every address.
function conflicts(a: HostPort, b: HostPort): boolean {
  return a.port === b.port && a.protocol === b.protocol && (a.hostIP === b.hostIP || a.hostIP === ANY || b.hostIP === ANY);
}

/**
 * Why the kubelet would reject `pod` given the pods it already admitted (that have not ended),
 * as its status says it: `{ reason, message }`, or undefined when it may run.
 */
export function admissionRejection(pod: KPod, admitted: Iterable<KPod>): { reason: string; message: string } | undefined {
  const wanted = hostPorts(pod);
  if (wanted.length === 0) return undefined;
  for (const other of admitted) {
    const taken = hostPorts(other);
    const clash = wanted.find((w) => taken.some((t) => conflicts(w, t)));
    if (clash) {
      return {
        reason: 'NodePorts',
        // The kubelet's own words ("Pod was rejected: " + the predicate's error), then which pod holds the port.
        message: `Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports (${clash.protocol} ${clash.hostIP}:${clash.port} is held by pod ${other.metadata.name})`,
      };
    }
  }
  return undefined;
}
