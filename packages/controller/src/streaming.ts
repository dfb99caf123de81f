// The kubelet's streaming protocols, as the subpath `@cello/controller/streaming`: exec, attach
// and port-forward over SPDY/3.1 (remotecommand v1-v4, portforward.k8s.io) and WebSocket
// (channel.k8s.io, base64, v4, v5; the port-forward channels), relayed to a pod's cell through the
// controller API. The virtual node's kubelet API serves them from its URLs; the CRI shim
// (cello-cri) from the requests its single-use streaming tokens stand for. One implementation.
export { SpdyStreams as KubeletStreams, type StreamsOptions as KubeletStreamsOptions } from './k8s/kubelet/streams.js';
export { refuse as refuseUpgrade, type StreamRequest, type ExecStreamRequest, type PortForwardStreamRequest } from './k8s/kubelet/stream-request.js';
export { DEFAULT_STREAM_IDLE_TIMEOUT_MS, parseIdleTimeout } from './k8s/kubelet/idle-timeout.js';
