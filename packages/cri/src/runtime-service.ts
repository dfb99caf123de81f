// CRI RuntimeService, honestly: what a node whose sandboxes are cells can answer today
// (Version, Status, RuntimeConfig), and UNIMPLEMENTED naming the RPC for everything else, so a
// kubelet or critest sees exactly what is missing instead of a success that did nothing.
import { status as GrpcStatus, type ServerWritableStream, type ServiceError, type UntypedServiceImplementation, Metadata } from '@grpc/grpc-js';
import { CgroupDriver, RuntimeServiceService, type RuntimeConfigResponse, type StatusRequest, type StatusResponse, type VersionResponse } from './gen/runtime/v1/api.js';

/** The CRI API version this shim speaks. */
export const RUNTIME_API_VERSION = 'v1';
export const RUNTIME_NAME = 'cello-cri';
/** The version string of the kubelet's Version request ("0.1.0" is the only one the kubelet sends and accepts). */
const KUBELET_RUNTIME_API = '0.1.0';

export interface RuntimeServiceOptions {
  version: string;
  /** What Status verbose shows as `info.config` (no secrets). */
  describeConfig: () => Record<string, unknown>;
}

const NOT_YET = 'pod sandboxes (one cell per pod) are not implemented in cello-cri yet; see docs/cri.md';

function unimplemented(rpc: string): ServiceError {
  const details = `RuntimeService/${rpc} is not implemented by cello-cri: ${NOT_YET}`;
  return Object.assign(new Error(details), { code: GrpcStatus.UNIMPLEMENTED, details, metadata: new Metadata() });
}

export function version(o: RuntimeServiceOptions): VersionResponse {
  return { version: KUBELET_RUNTIME_API, runtimeName: RUNTIME_NAME, runtimeVersion: o.version, runtimeApiVersion: RUNTIME_API_VERSION };
}

export function runtimeStatus(o: RuntimeServiceOptions, req: StatusRequest): StatusResponse {
  return {
    status: {
      conditions: [
        { type: 'RuntimeReady', status: false, reason: 'SandboxesNotImplemented', message: `cello-cri can pull and list images, but ${NOT_YET}` },
        {
          type: 'NetworkReady',
          status: false,
          reason: 'CellNetworkNotImplemented',
          message: "a pod's network is its cell's own (no CNI on this node); it comes with sandboxes, which are not implemented yet",
        },
      ],
    },
    info: req.verbose ? { config: JSON.stringify(o.describeConfig()) } : {},
    runtimeHandlers: [],
    features: { supplementalGroupsPolicy: false },
  };
}

export function runtimeConfig(): RuntimeConfigResponse {
  // The kubelet must agree with the runtime's cgroup driver; cello-cri creates no cgroups on the
  // node (a pod's cgroups are on its cell), and cgroupfs asks nothing of systemd.
  return { linux: { cgroupDriver: CgroupDriver.CGROUPFS } };
}

/** The RuntimeService handlers: the three above, and UNIMPLEMENTED for every other RPC. */
export function runtimeServiceHandlers(o: RuntimeServiceOptions): UntypedServiceImplementation {
  const implemented: UntypedServiceImplementation = {
    version: (_call: unknown, cb: (e: null, r: VersionResponse) => void) => cb(null, version(o)),
    status: (call: { request: StatusRequest }, cb: (e: null, r: StatusResponse) => void) => cb(null, runtimeStatus(o, call.request)),
    runtimeConfig: (_call: unknown, cb: (e: null, r: RuntimeConfigResponse) => void) => cb(null, runtimeConfig()),
  };
  const handlers: UntypedServiceImplementation = {};
  for (const [name, def] of Object.entries(RuntimeServiceService)) {
    const impl = implemented[name];
    if (impl) {
      handlers[name] = impl;
      continue;
    }
    const rpc = def.path.slice(def.path.lastIndexOf('/') + 1);
    handlers[name] = def.responseStream
      ? (call: ServerWritableStream<unknown, unknown>) => call.emit('error', unimplemented(rpc))
      : (_call: unknown, cb: (e: ServiceError) => void) => cb(unimplemented(rpc));
  }
  return handlers;
}
