// Prometheus metrics of the virtual node, registered on the controller's registry (its
// /metrics endpoint) or on a registry of the embedder's.
import { Counter, Gauge, Registry } from 'prom-client';

export class VirtualNodeMetrics {
  readonly podSyncs: Counter<'result'>;
  readonly statusPatches: Counter;
  readonly events: Counter<'type'>;
  readonly kubeletRequests: Counter<'endpoint' | 'code'>;
  readonly leader: Gauge;
  readonly pods: Gauge;
  readonly podUpdates: Counter<'why'>;

  constructor(registry: Registry = new Registry()) {
    const registers = [registry];
    const existing = <T>(name: string) => registry.getSingleMetric(name) as T | undefined;
    // Two virtual nodes in one process (tests) share the registry's metrics.
    this.podSyncs =
      existing('cello_k8s_pod_syncs_total') ??
      new Counter({ name: 'cello_k8s_pod_syncs_total', help: 'Pod syncs of the virtual node by result (ok, error)', labelNames: ['result'], registers });
    this.statusPatches =
      existing('cello_k8s_status_patches_total') ?? new Counter({ name: 'cello_k8s_status_patches_total', help: 'Pod status patches written to the API server', registers });
    this.events = existing('cello_k8s_events_total') ?? new Counter({ name: 'cello_k8s_events_total', help: 'Events recorded on pods, by type', labelNames: ['type'], registers });
    this.kubeletRequests =
      existing('cello_k8s_kubelet_requests_total') ??
      new Counter({ name: 'cello_k8s_kubelet_requests_total', help: 'Kubelet API requests by endpoint and HTTP status', labelNames: ['endpoint', 'code'], registers });
    this.leader = existing('cello_k8s_leader') ?? new Gauge({ name: 'cello_k8s_leader', help: '1 while this replica runs the virtual node', registers });
    this.pods = existing('cello_k8s_pods') ?? new Gauge({ name: 'cello_k8s_pods', help: 'Pods bound to the virtual node', registers });
    this.podUpdates =
      existing('cello_k8s_pod_updates_total') ??
      new Counter({
        name: 'cello_k8s_pod_updates_total',
        help: 'Running pods sent to the core again, by why: token (refresh), data (Secret/ConfigMap edited), spec (in-place update), adopted (after a restart)',
        labelNames: ['why'],
        registers,
      });
  }
}
