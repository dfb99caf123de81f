// The cell's Service proxy: Services and EndpointSlices in, nftables rules in the pod's network
// namespace out.
export { ServiceProxy, type ServiceProxyOptions, type SyncResult } from './proxy.js';
export { NftError } from './nft.js';
export type { Endpoint, EndpointSlice, Protocol, Service, ServicePort, ServiceSnapshot, TrafficPolicy } from './model.js';
