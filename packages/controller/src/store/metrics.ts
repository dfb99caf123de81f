// Prometheus metrics for a store, registered only when the caller passes a registry (so several
// stores in one process, as in tests, do not collide on the default registry).
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export class StoreMetrics {
  readonly opSeconds: Histogram<'op' | 'backend'>;
  readonly syncBatch: Histogram;
  readonly compactions: Counter;
  readonly leader: Gauge<'election'>;

  constructor(
    registry: Registry,
    private readonly backend: 'embedded' | 'etcd',
  ) {
    this.opSeconds = new Histogram({
      name: 'cello_store_operation_seconds',
      help: 'Store operation latency; a put is counted once durable',
      labelNames: ['op', 'backend'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    });
    this.syncBatch = new Histogram({
      name: 'cello_store_fsync_batch_writes',
      help: 'Writes made durable by one fsync of the embedded store (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
      registers: [registry],
    });
    this.compactions = new Counter({ name: 'cello_store_compactions_total', help: 'Embedded store WAL compactions into a snapshot', registers: [registry] });
    this.leader = new Gauge({ name: 'cello_store_leader', help: '1 while this process leads the election', labelNames: ['election'], registers: [registry] });
  }

  /** Times `p` as operation `op`. */
  async time<T>(op: string, p: Promise<T>): Promise<T> {
    const end = this.opSeconds.startTimer({ op, backend: this.backend });
    try {
      return await p;
    } finally {
      end();
    }
  }
}
