// The kubelet's /runningpods/: what the container runtime is running, not what the API says
// should run. A kubelet lists its runtime's pods with their running containers only, each as
// Pod.ToAPIPod writes it (uid, name, namespace, and per container its name and image). Here
// the runtime is the controller core: its pods of this node, with their running containers.
import type { PodObject } from '@cello/proto/controller';
import { ANNOTATION_UID } from '../node/manifest.js';

export interface RunningPod {
  metadata: { name: string; namespace: string; uid: string; creationTimestamp: null };
  spec: { containers: { name: string; image: string; resources: Record<string, never> }[] };
  status: Record<string, never>;
}

export function runningPods(core: PodObject[]): { kind: 'PodList'; apiVersion: 'v1'; metadata: Record<string, never>; items: RunningPod[] } {
  const items: RunningPod[] = [];
  for (const p of core) {
    const images = new Map((p.spec?.containers ?? []).map((c) => [c.name, c.image]));
    const running = (p.status?.containerStatuses ?? []).filter((c) => c.state?.state?.$case === 'running');
    if (!p.metadata || running.length === 0) continue;
    items.push({
      // The Kubernetes uid the pod was created for, not the core's own.
      metadata: { name: p.metadata.name, namespace: p.metadata.namespace, uid: p.metadata.annotations[ANNOTATION_UID] ?? p.metadata.uid, creationTimestamp: null },
      spec: { containers: running.map((c) => ({ name: c.name, image: c.image || images.get(c.name) || '', resources: {} })) },
      status: {},
    });
  }
  items.sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
  return { kind: 'PodList', apiVersion: 'v1', metadata: {}, items };
}
