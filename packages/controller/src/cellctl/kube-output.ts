// What `cellctl get -o json|yaml|name|jsonpath=` prints: pods as Kubernetes v1 Pods (a PodList
// when listing), so tools written for kubectl's output read it and `get -o yaml | apply -f -`
// gives back the same pod. Cells have no Kubernetes kind: they print as cello.dev/v1 Cells.
import { kubePod } from '@cello/proto';
import { Cell, type PodObject } from '@cello/proto/controller';
import { kubeStatus } from '../k8s/node/status.js';

type Obj = Record<string, unknown>;

const iso = (d: Date | undefined) => (d ? new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined);

/** Drops nulls and undefined (kubeStatus writes null to clear fields in a merge patch). */
function withoutNulls<T>(v: T): T {
  if (Array.isArray(v)) return v.map(withoutNulls) as T;
  if (v && typeof v === 'object' && !(v instanceof Date)) {
    const out: Obj = {};
    for (const [k, x] of Object.entries(v)) if (x !== null && x !== undefined) out[k] = withoutNulls(x);
    return out as T;
  }
  return v;
}

export function kubePodObject(p: PodObject): Obj {
  const m = p.metadata;
  const pod = kubePod({
    metadata: {
      name: m?.name ?? '',
      namespace: m?.namespace ?? '',
      uid: m?.uid ?? '',
      labels: m?.labels ?? {},
      annotations: m?.annotations ?? {},
      creationTimestamp: m?.creationTimestamp,
    },
    spec: p.spec,
  });
  const meta = pod.metadata as Obj;
  if (m?.resourceVersion) meta.resourceVersion = m.resourceVersion;
  if (m?.generation) meta.generation = m.generation;
  if (m?.deletionTimestamp) meta.deletionTimestamp = iso(m.deletionTimestamp);
  const spec = pod.spec as Obj;
  if (p.nodeName) spec.nodeName = p.nodeName;
  const status = p.status ? kubeStatus(p.status, { spec: p.spec }, p.status.hostIp) : { phase: 'Pending' };
  // The pod's host is its cell; with no address known there is no hostIP to print.
  if (!status.hostIP) {
    delete status.hostIP;
    delete status.hostIPs;
  }
  return withoutNulls({ ...pod, status });
}

export function kubeCellObject(c: Cell): Obj {
  const { id, ...rest } = Cell.toJSON(c) as Obj & { id?: string };
  return { apiVersion: 'cello.dev/v1', kind: 'Cell', metadata: { name: id ?? c.id }, ...rest };
}

/** One object when a name was asked for, else a list (as kubectl: even of one or none). */
export function kubeOutput(kind: 'pod' | 'cell', items: Array<PodObject | Cell>, single: boolean): Obj {
  const conv = (x: PodObject | Cell) => (kind === 'pod' ? kubePodObject(x as PodObject) : kubeCellObject(x as Cell));
  if (single && items.length === 1) return conv(items[0]!);
  return {
    apiVersion: kind === 'pod' ? 'v1' : 'cello.dev/v1',
    kind: kind === 'pod' ? 'PodList' : 'CellList',
    metadata: {},
    items: items.map(conv),
  };
}

/** kubectl's `-o name`: kind/name, one a line. */
export function names(kind: 'pod' | 'cell', items: Array<PodObject | Cell>): string {
  return items.map((x) => `${kind}/${kind === 'pod' ? (x as PodObject).metadata?.name : (x as Cell).id}\n`).join('');
}
