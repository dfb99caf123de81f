// gRPC handlers for the stream services (Logs, Exec, Attach, PortForward, Stats, ListAudit).
// The runtime's server wires these into its CellAgent service; they see units only through the
// UnitDirectory seam.
//
// Wiring (for the agent): pass `auditDir: join(stateDir, 'audit')` (without it ListAudit answers
// FAILED_PRECONDITION and sessions are not recorded), `metrics` (an AgentMetrics whose
// setStatsSource(() => handlers.statsCollector.collect()) feeds /metrics; wrap the service with
// instrumentService(impl, metrics) to count gRPC calls), `filesystems: [stateDir, '/']`, and call
// `close()` on shutdown (ends sessions, stops the per-netns port-forward relay process).
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { status as Status, type ServerDuplexStream, type ServerWritableStream, type ServiceError } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import {
  ExecOutput,
  ExitStatus,
  ListAuditResponse,
  PortForwardFrame,
  PortForwardTicketResponse,
  type CellAgentServer,
  type ExecInput,
  type LogChunk,
  type LogsRequest,
} from '@cello/proto/cell';
import { AuditLog, type AuditSession } from '../audit/index.js';
import { signalOfExitCode, startExec, type ExecSession } from '../exec/index.js';
import { ContainerLogs, LogsError } from '../logs/index.js';
import type { AgentMetrics } from '../metrics/index.js';
import { checkForwardPort, PortForwarder, PortForwardError } from '../portforward/index.js';
import type { PortForwardStreamListener } from '../portforward/stream-listener.js';
import { TicketLimitError } from '../portforward/tickets.js';
import { StatsCollector } from '../stats/index.js';
import { gatherBytesField, PF_DATA_FIELD } from './wire.js';

// Largest port-forward frame gathered from socket reads (see flush below).
const PF_MAX_FRAME = 1 << 20;
const ATTACH_EXIT_WAIT_MS = 10_000;
import type { UnitDirectory, UnitStdio } from '../units/unit-view.js';

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

export type StreamHandlers = Pick<CellAgentServer, 'logs' | 'exec' | 'attach' | 'portForward' | 'portForwardTicket' | 'stats' | 'listAudit'> & {
  /** Ends every open session and stops the port-forward relays. */
  close(): void;
  /** The collector behind Stats, for the metrics endpoint. */
  statsCollector: StatsCollector;
};

function grpcError(code: Status, message: string): Partial<ServiceError> {
  return { code, details: message, message };
}

/** Ends a server stream with a status (grpc-js turns an 'error' event into the call's status). */
function failStream(call: ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>, code: Status, message: string): void {
  call.emit('error', grpcError(code, message));
}

/** Writes with flow control: waits for 'drain' when the client is slow; false if the call died. */
async function send<T>(call: ServerWritableStream<unknown, T> | ServerDuplexStream<unknown, T>, msg: T, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return false;
  if (call.write(msg)) return true;
  try {
    await once(call, 'drain', { signal });
    return true;
  } catch {
    return false;
  }
}

function peerOf(call: ServerDuplexStream<unknown, unknown>): string {
  try {
    const cert = call.getAuthContext?.()?.sslPeerCertificate;
    // The certificate's identity (spiffe URI) says which component called, not just a name.
    const uri = /(?:^|, )URI:(spiffe:\/\/[^,]+)/.exec(cert?.subjectaltname ?? '')?.[1];
    if (uri) return `${uri} (${call.getPeer()})`;
    if (cert?.subject) {
      const cn = (cert.subject as unknown as Record<string, string>).CN;
      if (cn) return `CN=${cn} (${call.getPeer()})`;
    }
  } catch {
    /* plaintext */
  }
  return call.getPeer();
}

export function createStreamHandlers(deps: StreamHandlerDeps): StreamHandlers {
  const log = deps.logger.child({ component: 'streams' });
  const audit = deps.auditDir === undefined ? undefined : new AuditLog(deps.auditDir, { recordTranscripts: deps.recordTranscripts ?? false });
  const forwarder = deps.forwarder ?? new PortForwarder();
  const stats = new StatsCollector({ units: deps.units, ...(deps.filesystems ? { filesystems: deps.filesystems } : {}) });
  const live = new Set<() => void>();
  const metrics = deps.metrics;

  const logs: CellAgentServer['logs'] = (call: ServerWritableStream<LogsRequest, LogChunk>) => {
    const req = call.request;
    if (!req.container) return failStream(call, Status.INVALID_ARGUMENT, 'container is required');
    const unitLogs = deps.logsFor(req.container);
    if (unitLogs === undefined) return failStream(call, Status.NOT_FOUND, `container "${req.container}" not found in this pod`);
    const ac = new AbortController();
    const stop = () => ac.abort();
    call.on('cancelled', stop);
    call.on('close', stop);
    live.add(stop);
    const closeSession = req.follow ? metrics?.openSession('logs') : undefined;
    void (async () => {
      try {
        for await (const chunk of unitLogs.read(req, ac.signal)) {
          metrics?.streamed('logs', 'out', chunk.packedText.length + chunk.entries.reduce((n, e) => n + e.line.length, 0));
          if (!(await send(call, chunk, ac.signal))) return;
        }
        if (!ac.signal.aborted) call.end();
      } catch (err) {
        if (err instanceof LogsError) failStream(call, err.code === 'NOT_FOUND' ? Status.NOT_FOUND : Status.INVALID_ARGUMENT, err.message);
        else {
          log.error({ err, container: req.container }, 'logs read failed');
          failStream(call, Status.INTERNAL, `reading logs failed: ${(err as Error).message}`);
        }
      } finally {
        live.delete(stop);
        closeSession?.();
      }
    })();
  };

  /** Shared by Exec and Attach: start-frame validation, audit, flow control, one exit frame. */
  function session(kind: 'exec' | 'attach', call: ServerDuplexStream<ExecInput, ExecOutput>): void {
    const ac = new AbortController();
    let started = false;
    let finished = false;
    let proc: ExecSession | undefined;
    let stdio: UnitStdio | undefined;
    let rec: AuditSession | undefined;
    let closeSession: (() => void) | undefined;
    let stdinAllowed = false;

    const finish = (exit: ExitStatus | { code: Status; message: string }) => {
      if (finished) return;
      finished = true;
      live.delete(cancelAll);
      closeSession?.();
      if ('code' in exit) {
        rec?.end(ExitStatus.fromPartial({ exitCode: -1, message: exit.message }));
        failStream(call, exit.code, exit.message);
      } else {
        rec?.end(exit);
        if (!ac.signal.aborted) {
          call.write(ExecOutput.fromPartial({ frame: { $case: 'exit', value: exit } }));
          call.end();
        }
      }
      log.info({ kind, session: rec?.id, exit }, `${kind} session ended`);
    };
    // The client went away or ended its side of the stream: an exec'd process dies with the
    // session (its exit frame still goes out if the client is listening); an attach just
    // detaches and leaves the unit alone.
    const cancel = (how: 'ended' | 'cancelled') => {
      if (finished) return;
      if (how === 'cancelled') ac.abort();
      if (proc !== undefined) {
        proc.kill();
      } else {
        stdio?.output.destroy();
        finish(ExitStatus.fromPartial({ exitCode: 0, message: 'detached' }));
      }
    };
    const cancelAll = () => cancel('cancelled');
    live.add(cancelAll);
    call.on('cancelled', cancelAll);
    call.on('end', () => {
      if (!started) finish({ code: Status.INVALID_ARGUMENT, message: 'stream ended before the start frame' });
      else cancel('ended');
    });
    call.on('error', cancelAll);

    const output = (stream: 'stdout' | 'stderr', data: Buffer) => {
      rec?.output(data);
      metrics?.streamed(kind, 'out', data.length);
      if (finished || ac.signal.aborted) return;
      if (!call.write(ExecOutput.fromPartial({ frame: { $case: stream, value: data } }))) {
        // A slow client slows the command's output (like a terminal would), never the agent.
        if (proc) proc.pause();
        else stdio?.output.pause();
        call.once('drain', () => {
          if (proc) proc.resume();
          else stdio?.output.resume();
        });
      }
    };

    const start = (input: ExecInput) => {
      if (input.frame?.$case !== 'start') return finish({ code: Status.INVALID_ARGUMENT, message: 'the first frame must be start' });
      const s = input.frame.value;
      if (!s.container) return finish({ code: Status.INVALID_ARGUMENT, message: 'start.container is required' });
      const unit = deps.units.get(s.container);
      if (unit === undefined) return finish({ code: Status.NOT_FOUND, message: `container "${s.container}" not found in this pod` });
      if (!unit.running()) return finish({ code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` });
      if (kind === 'exec') {
        if (s.command.length === 0 || !s.command[0]) return finish({ code: Status.INVALID_ARGUMENT, message: 'start.command must name a program' });
        const target = unit.runc();
        if (target === undefined) return finish({ code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` });
        try {
          proc = startExec({
            target,
            command: s.command,
            tty: s.tty,
            stdin: s.stdin,
            columns: s.size?.columns ?? 0,
            rows: s.size?.rows ?? 0,
            ...(deps.runcPath ? { runcPath: deps.runcPath } : {}),
          });
        } catch (err) {
          return finish({ code: Status.INTERNAL, message: `exec failed: ${(err as Error).message}` });
        }
        stdinAllowed = s.stdin;
        proc.onOutput(output);
        void proc.result.then((r) => {
          if (r.startError) return finish({ code: r.startError.notFound ? Status.NOT_FOUND : Status.FAILED_PRECONDITION, message: r.startError.message });
          finish(ExitStatus.fromPartial({ exitCode: r.exitCode, signal: r.signal }));
        });
      } else {
        if (s.stdin && !unit.stdin) return finish({ code: Status.FAILED_PRECONDITION, message: `container "${s.container}" was not declared with stdin` });
        stdio = unit.attach();
        if (stdio === undefined) return finish({ code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` });
        stdinAllowed = s.stdin && stdio.stdin !== undefined;
        if (unit.tty && s.size && s.size.columns > 0 && s.size.rows > 0) stdio.resize(s.size.columns, s.size.rows);
        stdio.output.on('data', (d: Buffer) => output('stdout', d));
        stdio.output.on('error', () => {});
        const exited = stdio.exited;
        stdio.output.on('end', () => {
          // The output ends a moment before the exit status is known: wait for it (bounded, the
          // client should not hang on a runtime that never says).
          const message = 'the container instance ended';
          if (exited === undefined) return finish(ExitStatus.fromPartial({ exitCode: 0, message }));
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, ATTACH_EXIT_WAIT_MS, undefined)));
          void Promise.race([exited.call(stdio), timeout]).then((code) => {
            clearTimeout(timer);
            if (code === undefined) return finish(ExitStatus.fromPartial({ exitCode: -1, message: `${message}; its exit status was not known within ${ATTACH_EXIT_WAIT_MS / 1000} s` }));
            finish(ExitStatus.fromPartial({ exitCode: code, signal: signalOfExitCode(code), message }));
          });
        });
      }
      started = true;
      closeSession = metrics?.openSession(kind);
      rec = audit?.begin({ kind, container: s.container, command: kind === 'exec' ? s.command : [], tty: s.tty, stdin: s.stdin, peer: peerOf(call), user: s.requestedBy });
      log.info({ kind, session: rec?.id, container: s.container, tty: s.tty, stdin: s.stdin, user: s.requestedBy }, `${kind} session started`);
    };

    call.on('data', (input: ExecInput) => {
      if (finished) return;
      if (!started) return start(input);
      const f = input.frame;
      switch (f?.$case) {
        case 'stdin':
          if (!stdinAllowed) return;
          rec?.input(f.value);
          metrics?.streamed(kind, 'in', f.value.length);
          // A command that reads slowly slows the client down instead of filling our memory.
          if (proc) {
            if (!proc.write(f.value)) {
              call.pause();
              proc.onceDrain(() => call.resume());
            }
          } else if (stdio?.stdin && !stdio.stdin.write(f.value)) {
            call.pause();
            stdio.stdin.once('drain', () => call.resume());
          }
          return;
        case 'resize':
          if (f.value.columns > 0 && f.value.rows > 0) {
            if (proc) proc.resize(f.value.columns, f.value.rows);
            else stdio?.resize(f.value.columns, f.value.rows);
          }
          return;
        case 'stdinEof':
          if (proc) proc.endStdin();
          else stdio?.stdin?.end();
          return;
        case 'start':
          return finish({ code: Status.INVALID_ARGUMENT, message: 'start may only be the first frame' });
        default:
          return;
      }
    });
  }

  const portForward: CellAgentServer['portForward'] = (call: ServerDuplexStream<PortForwardFrame, PortForwardFrame>) => {
    let sock: Socket | undefined;
    let phase: 'wait-start' | 'connecting' | 'open' | 'done' = 'wait-start';
    const pending: Buffer[] = [];
    let pendingEnd = false;
    let closeSession: (() => void) | undefined;
    const done = (err?: { code: Status; message: string }) => {
      if (phase === 'done') return;
      phase = 'done';
      live.delete(abort);
      closeSession?.();
      // On success both directions have ended: let the socket flush and close by itself.
      if (err) sock?.destroy();
      else sock?.end();
      if (err) failStream(call, err.code, err.message);
      else call.end();
    };
    const abort = () => {
      if (phase === 'done') return;
      phase = 'done';
      live.delete(abort);
      closeSession?.();
      sock?.destroy();
    };
    live.add(abort);
    call.on('cancelled', abort);
    call.on('error', abort);
    let clientEnded = false;
    let podEnded = false;
    const maybeDone = () => {
      if (clientEnded && podEnded) done();
    };
    call.on('data', (f: PortForwardFrame) => {
      if (phase === 'done') return;
      const fr = f.frame;
      if (phase === 'wait-start') {
        if (fr?.$case !== 'start') return done({ code: Status.INVALID_ARGUMENT, message: 'the first frame must be start' });
        const port = fr.value.port;
        const bad = checkForwardPort(port);
        if (bad !== undefined) return done({ code: Status.INVALID_ARGUMENT, message: `start.${bad}` });
        phase = 'connecting';
        log.info({ port, peer: peerOf(call as ServerDuplexStream<unknown, unknown>), user: fr.value.requestedBy }, 'port-forward started');
        forwarder.connect(deps.units.netnsPath(), port).then(
          (s) => {
            if (phase !== 'connecting') return void s.destroy();
            sock = s;
            phase = 'open';
            closeSession = metrics?.openSession('port_forward');
            s.setNoDelay(true);
            for (const b of pending.splice(0)) s.write(b);
            if (pendingEnd) s.end();
            // Reads that arrive in the same turn of the event loop (a busy agent gets many
            // 64 KiB reads per turn) go out as one frame, gathered straight into the encoded
            // message (wire.ts): fewer, larger gRPC messages cost less per byte and add no latency.
            let outq: Buffer[] = [];
            let outBytes = 0;
            const flush = () => {
              if (outq.length === 0 || phase === 'done') return;
              const value = gatherBytesField(PF_DATA_FIELD, outq, outBytes);
              outq = [];
              outBytes = 0;
              metrics?.streamed('port_forward', 'out', value.length);
              if (!call.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value } }))) {
                s.pause();
                call.once('drain', () => s.resume());
              }
            };
            s.on('data', (d: Buffer) => {
              if (outq.length === 0) setImmediate(flush);
              outq.push(d);
              outBytes += d.length;
              if (outBytes >= PF_MAX_FRAME) flush();
            });
            s.on('end', () => {
              if (phase !== 'open') return;
              flush();
              call.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }));
              podEnded = true;
              maybeDone();
            });
            s.on('error', (e) => done({ code: Status.UNAVAILABLE, message: `connection to port ${port} failed: ${e.message}` }));
            s.on('close', () => {
              if (phase === 'open' && !podEnded) done({ code: Status.UNAVAILABLE, message: `connection to port ${port} closed` });
            });
            s.resume(); // the forwarder hands the socket over paused
          },
          (e: Error) =>
            done({ code: e instanceof PortForwardError ? Status.UNAVAILABLE : Status.INTERNAL, message: `cannot connect to port ${port} in the pod: ${e.message}` }),
        );
        return;
      }
      switch (fr?.$case) {
        case 'data':
          metrics?.streamed('port_forward', 'in', fr.value.length);
          if (sock) {
            if (!sock.write(fr.value)) {
              call.pause();
              sock.once('drain', () => call.resume());
            }
          } else pending.push(fr.value);
          return;
        case 'closeWrite':
          clientEnded = true;
          if (sock) sock.end();
          else pendingEnd = true;
          maybeDone();
          return;
        case 'error':
          return abort();
        default:
          return;
      }
    });
    call.on('end', () => {
      // The client closed its side of the stream: treat as a half-close if it had not said so.
      if (!clientEnded) {
        clientEnded = true;
        if (sock) sock.end();
        else if (phase === 'wait-start') return done({ code: Status.INVALID_ARGUMENT, message: 'stream ended before the start frame' });
        else pendingEnd = true;
      }
      maybeDone();
    });
  };

  const portForwardTicket: CellAgentServer['portForwardTicket'] = (call, callback) => {
    const stream = deps.portForwardStream;
    if (stream === undefined) return callback(grpcError(Status.UNIMPLEMENTED, 'this agent has no port-forward stream port; use PortForward'));
    const bad = checkForwardPort(call.request.port);
    if (bad !== undefined) return callback(grpcError(Status.INVALID_ARGUMENT, bad));
    try {
      const t = stream.issue(call.request.port);
      callback(null, PortForwardTicketResponse.fromPartial({ token: t.token, streamPort: stream.port, expires: t.expires }));
    } catch (err) {
      callback(grpcError(err instanceof TicketLimitError ? Status.RESOURCE_EXHAUSTED : Status.INTERNAL, (err as Error).message));
    }
  };

  return {
    logs,
    exec: (call) => session('exec', call),
    attach: (call) => session('attach', call),
    portForward,
    portForwardTicket,
    stats: (_call, callback) => {
      stats.collect().then(
        (r) => callback(null, r),
        (err: Error) => {
          log.error({ err }, 'stats failed');
          callback(grpcError(Status.INTERNAL, `stats failed: ${err.message}`));
        },
      );
    },
    listAudit: (call, callback) => {
      if (audit === undefined) return callback(grpcError(Status.FAILED_PRECONDITION, 'this agent keeps no audit log (no audit directory configured)'));
      try {
        callback(null, ListAuditResponse.fromPartial({ records: audit.list(call.request.limit || 100, call.request.includeTranscript) }));
      } catch (err) {
        callback(grpcError(Status.INTERNAL, `reading the audit log failed: ${(err as Error).message}`));
      }
    },
    close: () => {
      for (const c of [...live]) c();
      live.clear();
      forwarder.close();
    },
    statsCollector: stats,
  };
}
