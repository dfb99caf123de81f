// The cluster's Services and EndpointSlices as cells need them, kept once for every cell: each
// change bumps a version and is remembered (boundedly), so a cell's stream can be sent just
// the objects changed since the version it acknowledged, or a snapshot when it is too far
// behind. Changes arriving together reach each cell as one update (feeds send one update at a
// time, so a burst coalesces while the previous update is in flight).
import { EventEmitter } from 'node:events';
import type { ClusterEndpointSlice, ClusterService, ServicesUpdate } from '@cello/proto/cell';

interface Change {
  version: number;
  kind: 'service' | 'slice';
  key: string;
  at: number;
}

const splitKey = (key: string) => {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
};

export class ClusterServices extends EventEmitter<{ change: []; synced: [] }> {
  version = 0;
  private readonly services = new Map<string, ClusterService>();
  private readonly slices = new Map<string, ClusterEndpointSlice>();
  private changes: Change[] = [];
  private synced = false;
  private notify = false;
  private lastDelta: { base: number; version: number; update: ServicesUpdate } | undefined;

  /** `maxChanges`: how many changes are remembered for deltas (older cells get a snapshot). */
  constructor(private readonly maxChanges = 10_000) {
    super();
  }

  /** Whether both kinds have been listed once: until then a cell would get a partial picture. */
  isSynced(): boolean {
    return this.synced;
  }

  markSynced(): void {
    if (this.synced) return;
    this.synced = true;
    // A version of its own, so even an empty cluster gives cells a version to acknowledge.
    this.version++;
    this.emit('synced');
  }

  setService(key: string, svc: ClusterService | undefined): void {
    this.set(this.services, 'service', key, svc);
  }

  setSlice(key: string, slice: ClusterEndpointSlice | undefined): void {
    this.set(this.slices, 'slice', key, slice);
  }

  /** A Service by `namespace/name`, as cells get it. */
  service(key: string): ClusterService | undefined {
    return this.services.get(key);
  }

  /**
   * Every Service of a namespace (for a new pod's service links). A scan rather than an index:
   * it runs once per pod start, and a scan of even 10,000 Services costs well under a millisecond
   * next to the pod's API reads.
   */
  inNamespace(namespace: string): ClusterService[] {
    const out: ClusterService[] = [];
    for (const s of this.services.values()) if (s.namespace === namespace) out.push(s);
    return out;
  }

  /** A Service's cluster IPs by `namespace/name` (none when it is unknown or headless). */
  clusterIPs(key: string): string[] {
    return this.services.get(key)?.clusterIps ?? [];
  }

  counts(): { services: number; slices: number } {
    return { services: this.services.size, slices: this.slices.size };
  }

  snapshot(): ServicesUpdate {
    return { version: this.version, baseVersion: 0, services: [...this.services.values()], slices: [...this.slices.values()], removedServices: [], removedSlices: [] };
  }

  /** The changes after `base`, or undefined when they are no longer all remembered. */
  deltaSince(base: number): ServicesUpdate | undefined {
    if (base <= 0 || base > this.version) return undefined;
    const first = this.changes[0];
    if (base < this.version && (!first || first.version > base + 1)) return undefined;
    // Ten thousand cells acknowledging the same version ask for the same delta.
    if (this.lastDelta?.base === base && this.lastDelta.version === this.version) return this.lastDelta.update;
    const u: ServicesUpdate = { version: this.version, baseVersion: base, services: [], slices: [], removedServices: [], removedSlices: [] };
    const seen = new Set<string>();
    for (let i = this.changes.length - 1; i >= 0 && this.changes[i]!.version > base; i--) {
      const c = this.changes[i]!;
      const id = `${c.kind}|${c.key}`;
      if (seen.has(id)) continue;
      seen.add(id);
      if (c.kind === 'service') {
        const s = this.services.get(c.key);
        if (s) u.services.push(s);
        else u.removedServices.push(splitKey(c.key));
      } else {
        const s = this.slices.get(c.key);
        if (s) u.slices.push(s);
        else u.removedSlices.push(splitKey(c.key));
      }
    }
    this.lastDelta = { base, version: this.version, update: u };
    return u;
  }

  /** When the first change after `version` was made (for propagation latency); undefined if none. */
  changedAfter(version: number): number | undefined {
    let lo = 0;
    let hi = this.changes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.changes[mid]!.version <= version) lo = mid + 1;
      else hi = mid;
    }
    return this.changes[lo]?.at;
  }

  private set<T>(m: Map<string, T>, kind: Change['kind'], key: string, value: T | undefined): void {
    if (value === undefined) {
      if (!m.delete(key)) return;
    } else {
      // An object whose cell-relevant part did not change (a status write, a hint) is no change.
      const old = m.get(key);
      if (old !== undefined && JSON.stringify(old) === JSON.stringify(value)) return;
      m.set(key, value);
    }
    this.version++;
    this.changes.push({ version: this.version, kind, key, at: Date.now() });
    if (this.changes.length > this.maxChanges * 2) this.changes = this.changes.slice(-this.maxChanges);
    // One notification per burst of synchronous changes (an informer relist sets many).
    if (!this.notify) {
      this.notify = true;
      queueMicrotask(() => {
        this.notify = false;
        this.emit('change');
      });
    }
  }
}
