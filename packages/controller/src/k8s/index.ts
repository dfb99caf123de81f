// The Kubernetes face of the controller: a virtual node whose pods run on cells.
// client/   talks to the API server (REST, informers, leader lease, Token/SubjectAccessReview)
// kubelet/  serves what the API server calls on a kubelet (logs, exec/attach/port-forward over SPDY, stats)
// node/     the virtual node itself: the Node object, pod sync, pod status, manifests, capacity
// Here: the wiring (virtual-node.ts, from-config.ts), its configuration, and what both sides share
// (controller-client.ts, metrics.ts).
export { startVirtualNode, type VirtualNodeOptions, type VirtualNodeHandle } from './virtual-node.js';
export { KubeRest, KubeApiError, loadKubeConfig } from './client/rest.js';
export { VirtualNode, VIRTUAL_NODE_TAINT_KEY, type NodeCapacity } from './node/node.js';
export { PodSync } from './node/pods.js';
export { KubeletServer } from './kubelet/server.js';
export { LeaderElector, type LeaderElectionOptions } from './client/leader.js';
export { WorkQueue } from '../util/workqueue.js';
export { kubeStatus } from './node/status.js';
export { buildManifest, LABEL_NODE, ANNOTATION_UID } from './node/manifest.js';
export { kubernetesConfigSchema, type KubernetesConfig } from './config.js';
export { startVirtualNodeFromConfig, derivedCapacity } from './from-config.js';
