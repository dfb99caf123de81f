// The Kubernetes face of the controller: a virtual node whose pods run on cells.
export { startVirtualNode, type VirtualNodeOptions, type VirtualNodeHandle } from './virtual-node.js';
export { KubeRest, KubeApiError, loadKubeConfig } from './rest.js';
export { VirtualNode, VIRTUAL_NODE_TAINT_KEY, type NodeCapacity } from './node.js';
export { PodSync } from './pods.js';
export { KubeletServer } from './kubelet.js';
export { LeaderElector, type LeaderElectionOptions } from './leader.js';
export { WorkQueue } from '../util/workqueue.js';
export { kubeStatus } from './status.js';
export { buildManifest, LABEL_NODE, ANNOTATION_UID } from './manifest.js';
export { kubernetesConfigSchema, type KubernetesConfig } from './config.js';
export { startVirtualNodeFromConfig, derivedCapacity } from './from-config.js';
