// Leader election through a coordination.k8s.io Lease (client-go's leaderelection): several
// replicas of the controller may run; only the holder of the Lease runs the virtual node.
// Updates carry the Lease's resourceVersion, so two candidates can never both win a round.
import type { KubeRest } from './rest.js';
import { isConflict, isNotFound } from './rest.js';

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseSeconds?: number;
  renewSeconds?: number;
  retrySeconds?: number;
}

interface Lease {
  metadata: { resourceVersion?: string };
  spec?: { holderIdentity?: string; leaseDurationSeconds?: number; renewTime?: string; acquireTime?: string; leaseTransitions?: number };
}

const microTime = (d = new Date()) => d.toISOString().replace('Z', '000Z');

export class LeaderElector {
  private stopped = false;
  private timer?: NodeJS.Timeout;
  private leading = false;

  constructor(
    private readonly rest: KubeRest,
    private readonly o: LeaderElectionOptions,
    private readonly onError: (err: unknown) => void,
  ) {}

  private get path() {
    return `/apis/coordination.k8s.io/v1/namespaces/${this.o.namespace}/leases/${this.o.name}`;
  }

  /** One round: true when this identity holds the Lease afterwards. */
  async tryAcquireOrRenew(): Promise<boolean> {
    const duration = this.o.leaseSeconds ?? 15;
    let cur: Lease | undefined;
    try {
      cur = await this.rest.get<Lease>(this.path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const now = new Date();
    if (!cur) {
      try {
        await this.rest.post(`/apis/coordination.k8s.io/v1/namespaces/${this.o.namespace}/leases`, {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name: this.o.name, namespace: this.o.namespace },
          spec: { holderIdentity: this.o.identity, leaseDurationSeconds: duration, acquireTime: microTime(now), renewTime: microTime(now), leaseTransitions: 0 },
        });
        return true;
      } catch (err) {
        if (isConflict(err)) return false;
        throw err;
      }
    }
    const s = cur.spec ?? {};
    const mine = s.holderIdentity === this.o.identity;
    const expired = !s.holderIdentity || !s.renewTime || Date.parse(s.renewTime) + (s.leaseDurationSeconds ?? duration) * 1000 < now.getTime();
    if (!mine && !expired) return false;
    try {
      await this.rest.put(this.path, {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { ...cur.metadata, name: this.o.name, namespace: this.o.namespace },
        spec: {
          holderIdentity: this.o.identity,
          leaseDurationSeconds: duration,
          acquireTime: mine ? s.acquireTime : microTime(now),
          renewTime: microTime(now),
          leaseTransitions: (s.leaseTransitions ?? 0) + (mine ? 0 : 1),
        },
      });
      return true;
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
  }

  /** Runs rounds until stopped; calls onStart when leadership is won and onStop when lost. */
  run(onStart: () => void, onStop: () => void): void {
    const round = async () => {
      if (this.stopped) return;
      let held = false;
      try {
        held = await this.tryAcquireOrRenew();
      } catch (err) {
        this.onError(err);
      }
      if (this.stopped) return;
      if (held && !this.leading) {
        this.leading = true;
        onStart();
      } else if (!held && this.leading) {
        this.leading = false;
        onStop();
      }
      this.timer = setTimeout(round, (this.leading ? (this.o.renewSeconds ?? 5) : (this.o.retrySeconds ?? 2)) * 1000);
    };
    void round();
  }

  isLeader(): boolean {
    return this.leading;
  }

  /** Stops and, when leading, releases the Lease so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (!this.leading) return;
    this.leading = false;
    await this.rest.mergePatch(this.path, { spec: { holderIdentity: null, renewTime: null } }).catch(() => undefined);
  }
}
