// One exec or attach of the kubelet API relayed to the pod's cell agent through the controller's
// gRPC Exec/Attach, as cellctl does, whatever carries it to the client (SPDY streams or WebSocket
// channels, streams.ts and ws-streams.ts). Both directions have backpressure: a client that does
// not read pauses the gRPC call, an agent that does not take stdin pauses the client.
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { ExecOutput } from '@cello/proto/cell';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import { httpStatusOf } from './http-status.js';

/** The Kubernetes Status that ends a remotecommand stream (on its error channel). */
export interface ExecStatus {
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes: { reason: string; message: string }[] };
}

export interface ExecTarget {
  ns: string;
  pod: string;
  container: string;
}

export interface ExecOptions {
  kind: 'exec' | 'attach';
  command: string[];
  tty: boolean;
  stdin: boolean;
  /** Who the kubelet API authenticated, recorded by the agent. */
  user: string;
}

/** The client's side of the relay. */
export interface ExecSink {
  /** Output for the client; false: it reads slower than the command writes, `drained` is called once it caught up. */
  write(stream: 'stdout' | 'stderr', b: Buffer, drained: () => void): boolean;
  /** The command ended (or the call failed): the last thing the relay does. */
  finish(status: ExecStatus): void;
}

export class ExecRelay {
  private readonly call: ReturnType<Controller['client']['exec']>;
  private exited = false;

  constructor(controller: Controller, t: ExecTarget, o: ExecOptions, sink: ExecSink) {
    const c = o.kind === 'exec' ? controller.client.exec() : controller.client.attach();
    this.call = c;
    c.write({ frame: { $case: 'target', value: { namespace: t.ns, name: t.pod } } });
    c.write({
      frame: {
        $case: 'input',
        value: { frame: { $case: 'start', value: { container: t.container, command: o.command, tty: o.tty, stdin: o.stdin, size: undefined, requestedBy: o.user } } },
      },
    });
    const resume = () => c.resume();
    c.on('data', (out: ExecOutput) => {
      const f = out.frame;
      if (!f) return;
      if (f.$case === 'stdout' || f.$case === 'stderr') {
        if (!sink.write(f.$case, Buffer.from(f.value), resume)) c.pause();
      } else if (f.$case === 'exit') {
        this.exited = true;
        const code = f.value.exitCode;
        if (code === 0 && !f.value.signal) sink.finish({ metadata: {}, status: 'Success' });
        else
          sink.finish({
            metadata: {},
            status: 'Failure',
            message: `command terminated with non-zero exit code: ${f.value.message || `exit code ${code}`}`,
            reason: 'NonZeroExitCode',
            details: { causes: [{ reason: 'ExitCode', message: String(code) }] },
          });
        c.end();
      }
    });
    c.on('error', (err: ServiceError) => {
      if (this.exited || err.code === GrpcStatus.CANCELLED) return;
      const { code, reason } = httpStatusOf(err.code);
      sink.finish({ metadata: {}, status: 'Failure', message: err.details || err.message, reason, code });
    });
    c.on('end', () => {
      if (!this.exited) sink.finish({ metadata: {}, status: 'Success' });
    });
  }

  /** false: the agent is not taking stdin this fast; `drained` is called once it does. */
  stdin(b: Buffer, drained: () => void): boolean {
    if (this.call.write({ frame: { $case: 'input', value: { frame: { $case: 'stdin', value: b } } } })) return true;
    this.call.once('drain', drained);
    return false;
  }

  stdinEof(): void {
    this.call.write({ frame: { $case: 'input', value: { frame: { $case: 'stdinEof', value: true } } } });
  }

  resize(columns: number, rows: number): void {
    this.call.write({ frame: { $case: 'input', value: { frame: { $case: 'resize', value: { columns, rows } } } } });
  }

  cancel(): void {
    this.call.cancel();
  }
}

/** Reads the resize channel: JSON objects {"Width":W,"Height":H}, back to back, maybe split across chunks. */
export function resizeReader(onSize: (columns: number, rows: number) => void, log: Logger): (b: Buffer) => void {
  let buf = '';
  return (b) => {
    buf += b.toString('utf8');
    let end;
    while ((end = buf.indexOf('}')) >= 0) {
      const text = buf.slice(0, end + 1);
      buf = buf.slice(end + 1);
      try {
        const r = JSON.parse(text) as { Width?: number; Height?: number };
        onSize(r.Width ?? 0, r.Height ?? 0);
      } catch {
        log.debug({ text }, 'ignoring a resize message that is not JSON');
      }
    }
  };
}
