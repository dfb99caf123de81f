// CRI RuntimeService: Version, Status (honest conditions), RuntimeConfig, and the sandboxes and
// containers of pods/pod-service.ts (a sandbox is a cell), Exec/Attach/PortForward as URLs of
// streaming/stream-server.ts; UNIMPLEMENTED naming the RPC for
// everything else, so a kubelet or critest sees exactly what is missing instead of a success
// that did nothing.
import {
  status as GrpcStatus,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
  type UntypedServiceImplementation,
  Metadata,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CelloError, toStatus } from '@cello/proto';
import {
  CgroupDriver,
  RuntimeServiceService,
  type ContainerStatsRequest,
  type ContainerStatsResponse,
  type ContainerStatusRequest,
  type CreateContainerRequest,
  type ListContainerStatsRequest,
  type ListContainerStatsResponse,
  type ListPodSandboxStatsRequest,
  type ListPodSandboxStatsResponse,
  type PodSandboxStatsRequest,
  type PodSandboxStatsResponse,
  type UpdateContainerResourcesRequest,
  type CreateContainerResponse,
  type ExecSyncRequest,
  type ExecRequest,
  type ExecResponse,
  type AttachRequest,
  type AttachResponse,
  type PortForwardRequest,
  type PortForwardResponse,
  type ListContainersRequest,
  type ListContainersResponse,
  type ListPodSandboxRequest,
  type ListPodSandboxResponse,
  type PodSandboxStatusRequest,
  type RemoveContainerRequest,
  type ReopenContainerLogRequest,
  type RemovePodSandboxRequest,
  type RunPodSandboxRequest,
  type RunPodSandboxResponse,
  type RuntimeConfigResponse,
  type StartContainerRequest,
  type StatusRequest,
  type StatusResponse,
  type StopContainerRequest,
  type StopPodSandboxRequest,
  type VersionResponse,
} from './gen/runtime/v1/api.js';
import type { PodService } from './pods/pod-service.js';
import type { StreamServer } from './streaming/stream-server.js';

/** The CRI API version this shim speaks. */
export const RUNTIME_API_VERSION = 'v1';
export const RUNTIME_NAME = 'cello-cri';
/** The version string of the kubelet's Version request ("0.1.0" is the only one the kubelet sends and accepts). */
const KUBELET_RUNTIME_API = '0.1.0';

export interface RuntimeServiceOptions {
  version: string;
  /** What Status verbose shows as `info.config` (no secrets). */
  describeConfig: () => Record<string, unknown>;
  /** Sandboxes and containers on cells; absent when the shim was started without a controller. */
  pods?: PodService;
  /** The streaming server Exec/Attach/PortForward hand out URLs of (present with `pods`). */
  streaming?: StreamServer;
  /** Whether the controller answers (Status' RuntimeReady). */
  controllerReachable?: () => Promise<string | undefined>;
  logger: Logger;
}

const NOT_YET = 'not implemented by cello-cri yet; see docs/cri.md';
const NO_CONTROLLER = 'cello-cri was started without --controller-config, so it has no controller to run pods on (docs/cri.md)';

function unimplemented(rpc: string): ServiceError {
  const details = `RuntimeService/${rpc} is not implemented by cello-cri: ${NOT_YET}`;
  return Object.assign(new Error(details), { code: GrpcStatus.UNIMPLEMENTED, details, metadata: new Metadata() });
}

export function version(o: RuntimeServiceOptions): VersionResponse {
  return { version: KUBELET_RUNTIME_API, runtimeName: RUNTIME_NAME, runtimeVersion: o.version, runtimeApiVersion: RUNTIME_API_VERSION };
}

export async function runtimeStatus(o: RuntimeServiceOptions, req: StatusRequest): Promise<StatusResponse> {
  const problem = o.pods ? await o.controllerReachable?.() : NO_CONTROLLER;
  return {
    status: {
      conditions: [
        problem
          ? { type: 'RuntimeReady', status: false, reason: o.pods ? 'ControllerUnreachable' : 'NoController', message: problem }
          : { type: 'RuntimeReady', status: true, reason: '', message: '' },
        // A pod's network is its cell's own (the cell's address is the pod IP): nothing to set up on this node, no CNI.
        problem
          ? { type: 'NetworkReady', status: false, reason: 'NoCells', message: 'pods get their network from their cells, and no cell can be had: ' + problem }
          : { type: 'NetworkReady', status: true, reason: '', message: '' },
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

/** A unary handler from an async function; the call's cancellation (deadline, client gone) aborts it. */
export function unary<Req, Res>(log: Logger, rpc: string, fn: (req: Req, signal: AbortSignal) => Res | Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    const ac = new AbortController();
    call.on('cancelled', () => ac.abort());
    const deadline = call.getDeadline();
    const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : typeof deadline === 'number' && Number.isFinite(deadline) ? deadline - Date.now() : undefined;
    // A little before the caller's deadline, so the answer says what was waited for.
    const timer = ms !== undefined ? setTimeout(() => ac.abort(), Math.max(0, ms - 500)) : undefined;
    const t0 = performance.now();
    Promise.resolve()
      .then(() => fn(call.request, ac.signal))
      .then(
        (res) => {
          // Each call's duration at debug level: bench:cri reads them to say where a pod's time goes.
          log.debug({ rpc, ms: Math.round((performance.now() - t0) * 10) / 10 }, 'CRI call');
          cb(null, res);
        },
        (err: unknown) => {
          const e = toStatus(err);
          if (e.code === 13) log.error({ rpc, err }, 'CRI call failed');
          else log.info({ rpc, code: e.code, err: e.details }, 'CRI call refused');
          cb(e);
        },
      )
      .finally(() => clearTimeout(timer));
  };
}

/** Who the agent's audit log names for a stream through the shim (the controller adds the shim's own identity). */
const STREAM_USER = 'kubelet via cello-cri';

/** As the kubelet's streaming server (validateExecRequest): the same checks, the CRI's field names. */
function checkStreams(rpc: string, r: { containerId: string; tty: boolean; stdin: boolean; stdout: boolean; stderr: boolean }): void {
  if (!r.containerId) throw new CelloError('InvalidArgument', `${rpc}: container_id: is required`);
  if (r.tty && r.stderr) throw new CelloError('InvalidArgument', `${rpc}: tty and stderr cannot both be true (a terminal has one output stream)`);
  if (!r.stdin && !r.stdout && !r.stderr) throw new CelloError('InvalidArgument', `${rpc}: one of stdin, stdout and stderr must be set`);
}

function podHandlers(o: RuntimeServiceOptions): UntypedServiceImplementation {
  const log = o.logger;
  const pods = (): PodService => {
    if (!o.pods) throw new CelloError('FailedPrecondition', NO_CONTROLLER);
    return o.pods;
  };
  const streaming = (): StreamServer => {
    if (!o.streaming) throw new CelloError('FailedPrecondition', NO_CONTROLLER);
    return o.streaming;
  };
  return {
    runPodSandbox: unary(log, 'RunPodSandbox', async (r: RunPodSandboxRequest, signal): Promise<RunPodSandboxResponse> => ({
      podSandboxId: await pods().runPodSandbox(r, signal),
    })),
    stopPodSandbox: unary(log, 'StopPodSandbox', async (r: StopPodSandboxRequest, signal) => (await pods().stopPodSandbox(r.podSandboxId, signal), {})),
    removePodSandbox: unary(log, 'RemovePodSandbox', async (r: RemovePodSandboxRequest, signal) => (await pods().removePodSandbox(r.podSandboxId, signal), {})),
    podSandboxStatus: unary(log, 'PodSandboxStatus', (r: PodSandboxStatusRequest) => pods().podSandboxStatus(r.podSandboxId, r.verbose)),
    listPodSandbox: unary(log, 'ListPodSandbox', (r: ListPodSandboxRequest): ListPodSandboxResponse => ({ items: pods().listPodSandbox(r) })),
    createContainer: unary(log, 'CreateContainer', async (r: CreateContainerRequest): Promise<CreateContainerResponse> => ({ containerId: await pods().createContainer(r) })),
    startContainer: unary(log, 'StartContainer', async (r: StartContainerRequest, signal) => (await pods().startContainer(r.containerId, signal), {})),
    stopContainer: unary(log, 'StopContainer', async (r: StopContainerRequest, signal) => (await pods().stopContainer(r.containerId, Number(r.timeout), signal), {})),
    removeContainer: unary(log, 'RemoveContainer', async (r: RemoveContainerRequest, signal) => (await pods().removeContainer(r.containerId, signal), {})),
    containerStatus: unary(log, 'ContainerStatus', (r: ContainerStatusRequest) => pods().containerStatus(r.containerId, r.verbose)),
    listContainers: unary(log, 'ListContainers', async (r: ListContainersRequest): Promise<ListContainersResponse> => ({ containers: await pods().listContainers(r) })),
    reopenContainerLog: unary(log, 'ReopenContainerLog', (r: ReopenContainerLogRequest) => (pods().reopenContainerLog(r.containerId), {})),
    containerStats: unary(log, 'ContainerStats', async (r: ContainerStatsRequest): Promise<ContainerStatsResponse> => ({ stats: await pods().containerStats(r.containerId) })),
    listContainerStats: unary(log, 'ListContainerStats', async (r: ListContainerStatsRequest): Promise<ListContainerStatsResponse> => ({
      stats: await pods().listContainerStats(r.filter),
    })),
    podSandboxStats: unary(log, 'PodSandboxStats', async (r: PodSandboxStatsRequest): Promise<PodSandboxStatsResponse> => ({
      stats: await pods().podSandboxStats(r.podSandboxId),
    })),
    listPodSandboxStats: unary(log, 'ListPodSandboxStats', async (r: ListPodSandboxStatsRequest): Promise<ListPodSandboxStatsResponse> => ({
      stats: await pods().listPodSandboxStats(r.filter),
    })),
    updateContainerResources: unary(
      log,
      'UpdateContainerResources',
      (r: UpdateContainerResourcesRequest) => (pods().updateContainerResources(r.containerId, r.linux, r.windows), {}),
    ),
    exec: unary(log, 'Exec', (r: ExecRequest): ExecResponse => {
      checkStreams('Exec', r);
      if (!r.cmd.length) throw new CelloError('InvalidArgument', 'cmd: is required');
      const target = pods().streamTarget(r.containerId);
      return { url: streaming().url({ kind: 'exec', target, command: r.cmd, tty: r.tty, stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, user: STREAM_USER }) };
    }),
    attach: unary(log, 'Attach', (r: AttachRequest): AttachResponse => {
      checkStreams('Attach', r);
      const target = pods().streamTarget(r.containerId);
      return { url: streaming().url({ kind: 'attach', target, command: [], tty: r.tty, stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, user: STREAM_USER }) };
    }),
    portForward: unary(log, 'PortForward', (r: PortForwardRequest): PortForwardResponse => {
      if (!r.podSandboxId) throw new CelloError('InvalidArgument', 'pod_sandbox_id: is required');
      const bad = r.port.find((p) => !Number.isInteger(p) || p < 1 || p > 65535);
      if (bad !== undefined) throw new CelloError('InvalidArgument', `port: ${bad} is not a port number (1-65535)`);
      const target = pods().sandboxTarget(r.podSandboxId);
      return { url: streaming().url({ kind: 'portForward', target, ports: r.port, user: STREAM_USER }) };
    }),
    execSync: unary(log, 'ExecSync', (r: ExecSyncRequest, signal) => pods().execSync(r.containerId, r.cmd, Number(r.timeout), signal)),
  };
}

/** The RuntimeService handlers: the ones above, and UNIMPLEMENTED for every other RPC. */
export function runtimeServiceHandlers(o: RuntimeServiceOptions): UntypedServiceImplementation {
  const implemented: UntypedServiceImplementation = {
    version: (_call: unknown, cb: (e: null, r: VersionResponse) => void) => cb(null, version(o)),
    status: unary(o.logger, 'Status', (r: StatusRequest) => runtimeStatus(o, r)),
    runtimeConfig: (_call: unknown, cb: (e: null, r: RuntimeConfigResponse) => void) => cb(null, runtimeConfig()),
    ...podHandlers(o),
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
