// Prometheus metrics for the controller, on their own registry so tests and embedders can run
// several controllers in one process.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly reconcileSeconds = new Histogram({
    name: 'cello_reconcile_duration_seconds',
    help: 'Time to reconcile one pod or cell',
    labelNames: ['kind'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly podStartSeconds = new Histogram({
    name: 'cello_pod_start_seconds',
    help: 'From pod creation to Running (or Succeeded) as seen by the controller',
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  });
  readonly prePullImages = new Counter({
    name: 'cello_prepull_images_total',
    help: 'Images of pods that landed on warm cells: hit (pre-pulled there) or miss',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly prePulls = new Counter({
    name: 'cello_prepull_pulls_total',
    help: 'Pre-pulls on warm cells by outcome (pulled, cached, failed)',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly launches = new Counter({
    name: 'cello_cell_launches_total',
    help: 'Cell launches by instance type and outcome (ok, capacity, error)',
    labelNames: ['instance_type', 'outcome'],
    registers: [this.registry],
  });
  readonly cellsLost = new Counter({
    name: 'cello_cells_lost_total',
    help: 'Cells whose agent went silent past the health deadline',
    registers: [this.registry],
  });
  readonly garbageCollected = new Counter({
    name: 'cello_cells_garbage_collected_total',
    help: 'Instances terminated by the collector because the store did not know them',
    registers: [this.registry],
  });
  readonly cells = new Gauge({
    name: 'cello_cells',
    help: 'Cells by state',
    labelNames: ['state'],
    registers: [this.registry],
  });
  readonly pods = new Gauge({
    name: 'cello_pods',
    help: 'Pods by phase',
    labelNames: ['phase'],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: 'cello_work_queue_depth',
    help: 'Pods and cells waiting to be reconciled',
    registers: [this.registry],
  });
  readonly certRenewals = new Counter({
    name: 'cello_certificate_renewals_total',
    help: 'Certificate renewals by whose certificate (cell, controller) and outcome (ok, error)',
    labelNames: ['subject', 'outcome'],
    registers: [this.registry],
  });
  readonly isLeader = new Gauge({
    name: 'cello_leader',
    help: '1 while this controller is the leader',
    registers: [this.registry],
  });

  constructor(opts: { defaults?: boolean } = {}) {
    if (opts.defaults) collectDefaultMetrics({ register: this.registry });
  }
}
