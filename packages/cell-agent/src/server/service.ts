// The cello.cell.v1.CellAgent service: the pod RPCs here, the stream RPCs (logs, exec, attach,
// port-forward, stats, audit) from the streams module when it is present.
import os from 'node:os';
import { type ServerUnaryCall, type sendUnaryData, type ServerWritableStream, status as Status } from '@grpc/grpc-js';
import type { CellAgentServer, CellNotice, GetStatusResponse, WatchStatusEvent, WatchStatusRequest, Event } from '@cello/proto/cell';
import type pino from 'pino';
import { toStatus, type LineRing } from '@cello/proto';
import type { PodManager } from '../pod/pod-manager.js';
import type { AgentMetrics } from '../metrics/index.js';
import type { StreamRpcs } from './stream-handlers.js';
import type { ImageService } from '../images/image-service.js';
import type { RegistryConfig } from '@cello/image-puller';
import { pullImageHandler } from './pull-image.js';
import { configureRegistriesHandler } from './configure-registries.js';
import { agentLogsRpc } from './streams/agent-logs.js';

export interface ServiceDeps {
  pod: PodManager;
  logger: pino.Logger;
  streams: StreamRpcs | undefined;
  info: { version: string; cellId: string; runtime: string; cgroupMode: string; startedAt: Date };
  heartbeatMs: number;
  metrics?: AgentMetrics;
  syncServices?: CellAgentServer['syncServices'];
  /** The image service and cache the pod uses; PullImage is UNIMPLEMENTED without it. */
  images?: ImageService;
  /** Where ConfigureRegistries keeps and applies what it is sent; UNIMPLEMENTED without it. */
  registries?: { stateDir: string; apply: (r: RegistryConfig) => void };
  /** The agent's own log lines (AgentLogs); FAILED_PRECONDITION without them. */
  ownLogs?: LineRing;
}

function unimplemented(name: string) {
  return (call: { emit?: unknown; end?: () => void; destroy?: (e: Error) => void } | unknown, cb?: unknown) => {
    const e = { code: Status.UNIMPLEMENTED, details: `${name} is not available in this build of the agent` };
    if (typeof cb === 'function') return (cb as (e: unknown) => void)(e);
    const c = call as { emit: (ev: string, e: unknown) => void };
    c.emit('error', e);
  };
}

/** Counts unary calls and their status codes in the agent's metrics. */
function measured<Req, Res>(d: ServiceDeps, method: string, h: (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => void) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    const t0 = performance.now();
    h(call, (err, res) => {
      const code = err ? Status[(err as { code?: Status }).code ?? Status.UNKNOWN] : 'OK';
      d.metrics?.recordGrpcCall(method, code ?? 'UNKNOWN', (performance.now() - t0) / 1000);
      cb(err, res);
    });
  };
}

export function createService(d: ServiceDeps): CellAgentServer {
  const s = d.streams;
  const svc: CellAgentServer = {
    applyPod: (call, cb) => {
      d.pod.apply(call.request).then(
        (r) => cb(null, r),
        (err) => {
          d.logger.warn({ err: (err as Error).message }, 'ApplyPod refused');
          cb(toStatus(err));
        },
      );
    },
    deletePod: (call, cb) => {
      d.pod.delete(call.request.gracePeriodSeconds).then(
        () => cb(null, {}),
        (err) => cb(toStatus(err)),
      );
    },
    getStatus: (_call: ServerUnaryCall<unknown, GetStatusResponse>, cb: sendUnaryData<GetStatusResponse>) => cb(null, d.pod.status()),
    watchStatus: (call: ServerWritableStream<WatchStatusRequest, WatchStatusEvent>) => {
      let seq = 0;
      const onStatus = (st: GetStatusResponse) => call.write({ kind: { $case: 'status', value: st } });
      const onEvent = (e: Event) => call.write({ kind: { $case: 'event', value: e } });
      // Instance notices (spot interruption, rebalance, maintenance) from src/cloud, emitted on the pod manager.
      const onNotice = (n: CellNotice) => call.write({ kind: { $case: 'notice', value: n } });
      d.pod.on('status', onStatus);
      d.pod.on('event', onEvent);
      d.pod.on('notice', onNotice);
      const hb = setInterval(() => call.write({ kind: { $case: 'heartbeat', value: { time: new Date(), sequence: ++seq } } }), d.heartbeatMs);
      const done = () => {
        clearInterval(hb);
        d.pod.off('status', onStatus);
        d.pod.off('event', onEvent);
        d.pod.off('notice', onNotice);
      };
      call.on('cancelled', done);
      call.on('close', done);
      call.on('error', done);
      onStatus(d.pod.status());
    },
    getInfo: (_call, cb) =>
      cb(null, {
        version: d.info.version,
        cellId: d.info.cellId,
        hostname: os.hostname(),
        kernel: os.release(),
        arch: os.arch(),
        runtime: d.info.runtime,
        cgroupMode: d.info.cgroupMode,
        startedAt: d.info.startedAt,
      }),
    logs: s?.logs ?? (unimplemented('Logs') as CellAgentServer['logs']),
    exec: s?.exec ?? (unimplemented('Exec') as CellAgentServer['exec']),
    attach: s?.attach ?? (unimplemented('Attach') as CellAgentServer['attach']),
    portForward: s?.portForward ?? (unimplemented('PortForward') as CellAgentServer['portForward']),
    portForwardTicket: s?.portForwardTicket ?? (unimplemented('PortForwardTicket') as CellAgentServer['portForwardTicket']),
    stats: s?.stats ?? (unimplemented('Stats') as CellAgentServer['stats']),
    listAudit: s?.listAudit ?? (unimplemented('ListAudit') as CellAgentServer['listAudit']),
    agentLogs: agentLogsRpc(d.ownLogs),
    syncServices: d.syncServices ?? (unimplemented('SyncServices') as CellAgentServer['syncServices']),
    pullImage: d.images ? pullImageHandler(d.images, d.logger) : (unimplemented('PullImage') as CellAgentServer['pullImage']),
    configureRegistries: d.registries
      ? configureRegistriesHandler({ ...d.registries, log: d.logger })
      : (unimplemented('ConfigureRegistries') as CellAgentServer['configureRegistries']),
  };
  svc.applyPod = measured(d, 'ApplyPod', svc.applyPod);
  svc.deletePod = measured(d, 'DeletePod', svc.deletePod);
  svc.getStatus = measured(d, 'GetStatus', svc.getStatus);
  svc.getInfo = measured(d, 'GetInfo', svc.getInfo);
  svc.pullImage = measured(d, 'PullImage', svc.pullImage);
  svc.configureRegistries = measured(d, 'ConfigureRegistries', svc.configureRegistries);
  svc.portForwardTicket = measured(d, 'PortForwardTicket', svc.portForwardTicket);
  return svc;
}
