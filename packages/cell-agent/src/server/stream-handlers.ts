// gRPC handlers for the stream services (Logs, Exec, Attach, PortForward, Stats, ListAudit).
// The runtime's server wires these into its CellAgent service; they see units only through the
// UnitDirectory seam.
//
// Wiring (for the agent): pass `auditDir: join(stateDir, 'audit')` (without it ListAudit answers
// FAILED_PRECONDITION and sessions are not recorded), `metrics` (an AgentMetrics whose
// setStatsSource(() => handlers.statsCollector.collect()) feeds /metrics; wrap the service with
// instrumentService(impl, metrics) to count gRPC calls), `filesystems: [stateDir, '/']`, and call
// `close()` on shutdown (ends sessions, stops the per-netns port-forward relay process).
import type { Logger } from 'pino';
import type { CellAgentServer } from '@cello/proto/cell';
import { AuditLog } from '../audit/index.js';
import type { ContainerLogs } from '../logs/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { PortForwarder } from '../portforward/index.js';
import type { PortForwardStreamListener } from '../portforward/stream-listener.js';
import { StatsCollector } from '../stats/index.js';
import type { UnitDirectory } from '../units/unit-view.js';
import { listAuditRpc } from './streams/audit.js';
import type { StreamContext } from './streams/context.js';
import { attachRpc, execRpc } from './streams/exec-attach.js';
import { logsRpc } from './streams/logs.js';
import { portForwardRpc, portForwardTicketRpc } from './streams/port-forward.js';
import { statsRpc } from './streams/stats.js';

export interface StreamHandlerDeps {
  units: UnitDirectory;
  logsFor(unit: string): ContainerLogs | undefined;
  logger: Logger;
  /** Where the exec/attach audit log lives (e.g. STATE_DIR/audit). Without it ListAudit fails. */
  auditDir?: string;
  /** Also keep each session's transcript (bytes both ways, up to 1 MiB per session). */
  recordTranscripts?: boolean;
  metrics?: AgentMetrics;
  /** Filesystems whose usage Stats reports for the cell. Default: "/". */
  filesystems?: string[];
  runcPath?: string;
  /** Shared with the stream listener (one helper per namespace); default: one of its own. */
  forwarder?: PortForwarder;
  /** The port-forward stream port; without it PortForwardTicket answers UNIMPLEMENTED (clients use PortForward). */
  portForwardStream?: Pick<PortForwardStreamListener, 'port' | 'issue'>;
}

/** The RPCs of the CellAgent service that this module serves (the pod RPCs are service.ts's). */
export type StreamRpcs = Pick<CellAgentServer, 'logs' | 'exec' | 'attach' | 'portForward' | 'portForwardTicket' | 'stats' | 'listAudit'>;

export type StreamHandlers = StreamRpcs & {
  /** Ends every open session and stops the port-forward relays. */
  close(): void;
  /** The collector behind Stats, for the metrics endpoint. */
  statsCollector: StatsCollector;
};

export function createStreamHandlers(deps: StreamHandlerDeps): StreamHandlers {
  const ctx: StreamContext = {
    units: deps.units,
    log: deps.logger.child({ component: 'streams' }),
    metrics: deps.metrics,
    audit: deps.auditDir === undefined ? undefined : new AuditLog(deps.auditDir, { recordTranscripts: deps.recordTranscripts ?? false }),
    forwarder: deps.forwarder ?? new PortForwarder(),
    runcPath: deps.runcPath,
    portForwardStream: deps.portForwardStream,
    live: new Set(),
  };
  const stats = new StatsCollector({ units: deps.units, ...(deps.filesystems ? { filesystems: deps.filesystems } : {}) });
  return {
    logs: logsRpc(ctx, (unit) => deps.logsFor(unit)),
    exec: execRpc(ctx),
    attach: attachRpc(ctx),
    portForward: portForwardRpc(ctx),
    portForwardTicket: portForwardTicketRpc(ctx),
    stats: statsRpc(ctx, stats),
    listAudit: listAuditRpc(ctx),
    close: () => {
      for (const c of [...ctx.live]) c();
      ctx.live.clear();
      ctx.forwarder.close();
    },
    statsCollector: stats,
  };
}
