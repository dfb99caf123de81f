// `cell-agent ctl logs | exec | port-forward`: the stream commands, behaving like their kubectl
// namesakes against one cell.
import { splitHostPort } from '@cello/proto';
import { createServer, type Server, type Socket } from 'node:net';
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { ExecInput, LogsRequest, PortForwardFrame, type CellAgentClient, type ExecOutput, type LogChunk, type PortForwardTicketResponse } from '@cello/proto/cell';
import { TextRenderer } from '../logs/index.js';
import { endWithStaticReads, relay } from '../portforward/relay.js';
import { openStreamConnection, type StreamClientTls } from '../portforward/stream-client.js';

/** "90s", "5m", "1h30m", "2h" -> seconds. */
export function parseDuration(text: string): number {
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const n = Number(m[1]);
    total += m[2] === 'ms' ? n / 1000 : m[2] === 's' ? n : m[2] === 'm' ? n * 60 : n * 3600;
    matched = re.lastIndex;
  }
  if (matched === 0 || matched !== text.length) throw new Error(`--since: "${text}" is not a duration like 30s, 5m or 1h`);
  return Math.ceil(total);
}

function intArg(flag: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag}: "${v}" is not a non-negative integer`);
    return n;
  };
}

function describeError(err: ServiceError | Error): string {
  return 'details' in err && err.details ? err.details : err.message;
}

// ---- logs ----

export function runLogs(
  client: CellAgentClient,
  req: LogsRequest,
  out: NodeJS.WritableStream = process.stdout,
  errOut: NodeJS.WritableStream = process.stderr,
): { done: Promise<void>; cancel(): void } {
  // Packed chunks: the agent and this client then spend nothing per line (see LogsRequest.packed).
  const call = client.logs({ ...req, packed: true });
  const render = new TextRenderer(false);
  const done = new Promise<void>((resolve, reject) => {
    call.on('data', (c: LogChunk) => {
      if (c.droppedBytes > 0) errOut.write(`[cell-agent: this reader fell behind; ${c.droppedBytes} bytes of log were skipped]\n`);
      const text = req.timestamps && c.text.length > 0 ? c.text : render.chunk(c);
      if (!out.write(text)) {
        call.pause();
        out.once('drain', () => call.resume());
      }
    });
    call.on('end', () => resolve());
    call.on('error', (e: ServiceError) => (e.code === 1 /* CANCELLED */ ? resolve() : reject(new Error(describeError(e)))));
  });
  return { done, cancel: () => call.cancel() };
}

// ---- exec ----

export interface ExecIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(raw: boolean): unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number; rows?: number; on(ev: 'resize', cb: () => void): unknown };
  stderr: NodeJS.WritableStream;
}

/** Runs a command in a unit; resolves with the exit code to exit with (the remote one). */
export function runExec(
  client: CellAgentClient,
  opts: { unit: string; command: string[]; stdin: boolean; tty: boolean },
  io: ExecIo = process as unknown as ExecIo,
): Promise<number> {
  let tty = opts.tty;
  if (tty && !io.stdin.isTTY) {
    io.stderr.write('Unable to use a TTY - input is not a terminal\n');
    tty = false;
  }
  const call = client.exec();
  const raw = tty && opts.stdin && typeof io.stdin.setRawMode === 'function';
  const restore = () => {
    if (raw) io.stdin.setRawMode!(false);
  };
  const size = tty ? { columns: io.stdout.columns ?? 80, rows: io.stdout.rows ?? 24 } : undefined;
  call.write(ExecInput.fromPartial({ frame: { $case: 'start', value: { container: opts.unit, command: opts.command, tty, stdin: opts.stdin, size } } }));
  if (raw) io.stdin.setRawMode!(true);
  const onResize = () => call.write(ExecInput.fromPartial({ frame: { $case: 'resize', value: { columns: io.stdout.columns ?? 80, rows: io.stdout.rows ?? 24 } } }));
  if (tty) io.stdout.on('resize', onResize);
  const onData = (d: Buffer) => call.write(ExecInput.fromPartial({ frame: { $case: 'stdin', value: Buffer.from(d) } }));
  const onEnd = () => call.write(ExecInput.fromPartial({ frame: { $case: 'stdinEof', value: true } }));
  if (opts.stdin) {
    io.stdin.on('data', onData);
    io.stdin.on('end', onEnd);
    io.stdin.resume();
  }
  const cleanup = () => {
    restore();
    if (opts.stdin) {
      io.stdin.off('data', onData);
      io.stdin.off('end', onEnd);
      io.stdin.pause();
    }
    if (tty) (io.stdout as unknown as NodeJS.EventEmitter).off('resize', onResize);
  };
  return new Promise<number>((resolve, reject) => {
    let exit: number | undefined;
    call.on('data', (m: ExecOutput) => {
      const f = m.frame;
      if (f?.$case === 'stdout') io.stdout.write(f.value);
      else if (f?.$case === 'stderr') io.stderr.write(f.value);
      else if (f?.$case === 'exit') {
        exit = f.value.exitCode;
        if (exit === 0 && f.value.signal) exit = 128;
      }
    });
    call.on('end', () => {
      cleanup();
      resolve(exit ?? 1);
    });
    call.on('error', (e: ServiceError) => {
      cleanup();
      reject(new Error(describeError(e)));
    });
  });
}

// ---- port-forward ----

export interface Forwarding {
  server: Server;
  localPort: number;
  close(): Promise<void>;
}

/** Relays one local connection over one PortForward stream. */
export function forwardConnection(client: CellAgentClient, sock: Socket, remotePort: number, onError: (msg: string) => void = () => {}): void {
  const call = client.portForward();
  sock.setNoDelay(true);
  call.write(PortForwardFrame.fromPartial({ frame: { $case: 'start', value: { port: remotePort } } }));
  sock.on('data', (d: Buffer) => {
    if (!call.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value: d } }))) {
      sock.pause();
      call.once('drain', () => sock.resume());
    }
  });
  sock.on('end', () => call.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } })));
  sock.resume(); // (forwardPort accepts connections paused)
  sock.on('error', () => call.cancel());
  sock.on('close', () => call.cancel());
  call.on('data', (f: PortForwardFrame) => {
    const fr = f.frame;
    if (fr?.$case === 'data') {
      if (!sock.write(fr.value)) {
        call.pause();
        sock.once('drain', () => call.resume());
      }
    } else if (fr?.$case === 'closeWrite') sock.end();
  });
  call.on('end', () => sock.end());
  call.on('error', (e: ServiceError) => {
    if (e.code !== 1 /* CANCELLED */) onError(describeError(e));
    sock.destroy();
  });
}

/** Where the agent's port-forward stream port is: the agent's host, and TLS when the API is mTLS. */
export interface StreamPortAccess {
  host: string;
  tls?: StreamClientTls;
}

export type ForwardPath = 'stream port' | 'gRPC stream';

/**
 * Relays one local connection through the agent's stream port: a PortForwardTicket over gRPC,
 * then the bytes over a connection of their own. Resolves false, having done nothing, when the
 * agent does not offer the stream port (UNIMPLEMENTED): use forwardConnection instead.
 */
export function forwardConnectionViaStreamPort(
  client: CellAgentClient,
  access: StreamPortAccess,
  sock: Socket,
  remotePort: number,
  onError: (msg: string) => void = () => {},
): Promise<boolean> {
  sock.setNoDelay(true);
  // Until the relay takes over: a local client that resets must not take the process down.
  sock.on('error', () => {});
  return new Promise<boolean>((resolve) => {
    client.portForwardTicket({ port: remotePort }, (err: ServiceError | null, t?: PortForwardTicketResponse) => {
      if (err?.code === Status.UNIMPLEMENTED) return resolve(false);
      resolve(true);
      if (err || !t) {
        onError(err ? describeError(err) : 'no ticket');
        sock.destroy();
        return;
      }
      openStreamConnection({ host: access.host, port: t.streamPort, token: t.token, ...(access.tls ? { tls: access.tls } : {}) }).then(
        (remote) => {
          // A local connection accepted unread (forwardPort's server) is re-wrapped to read into
          // a static buffer too (see relay.ts); one that has read already relays 'data' events.
          const local = endWithStaticReads(sock);
          void relay(local, remote).then((r) => {
            if (r.error && !local.socket.destroyed) onError(r.error.message);
          });
        },
        (e: Error) => {
          onError(e.message);
          sock.destroy();
        },
      );
    });
  });
}

/**
 * Listens on host:localPort (0: any free port) and forwards each connection to remotePort:
 * through the agent's stream port when `stream` is given and the agent offers one, else (and
 * from the first UNIMPLEMENTED on) over PortForward gRPC streams.
 */
export async function forwardPort(
  client: CellAgentClient,
  opts: { host: string; localPort: number; remotePort: number; onError?: (msg: string) => void; stream?: StreamPortAccess; onConnection?: (path: ForwardPath) => void },
): Promise<Forwarding> {
  let useStreamPort = opts.stream !== undefined;
  const handle = async (sock: Socket) => {
    if (useStreamPort && opts.stream && (await forwardConnectionViaStreamPort(client, opts.stream, sock, opts.remotePort, opts.onError))) {
      opts.onConnection?.('stream port');
      return;
    }
    useStreamPort = false;
    opts.onConnection?.('gRPC stream');
    forwardConnection(client, sock, opts.remotePort, opts.onError);
  };
  // Accepted unread: the stream path re-wraps each connection to read into a static buffer,
  // which needs a socket that has read nothing; the gRPC path resumes it.
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => void handle(sock));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.localPort, opts.host, () => resolve());
  });
  const addr = server.address();
  return {
    server,
    localPort: typeof addr === 'object' && addr !== null ? addr.port : opts.localPort,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

export function parsePortMapping(spec: string): { local: number; remote: number } {
  const m = /^(?:(\d*):)?(\d+)$/.exec(spec);
  const bad = () => new Error(`port mapping "${spec}" is not LOCAL:REMOTE, :REMOTE or PORT (ports 1-65535; LOCAL 0 or empty picks a free port)`);
  if (m === null) throw bad();
  const remote = Number(m[2]);
  const local = spec.includes(':') ? Number(m[1] || 0) : remote;
  if (remote < 1 || remote > 65535 || local < 0 || local > 65535) throw bad();
  return { local, remote };
}

// ---- commander wiring ----

/** The stream port's host and TLS from ctl's own options (--addr, --tls-*, --server-name). */
function streamPortAccess(ctl: Command): StreamPortAccess {
  const o = ctl.opts<{ addr: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; serverName?: string }>();
  const { host } = splitHostPort(o.addr);
  if (!o.tlsCert || !o.tlsKey || !o.tlsCa) return { host };
  return { host, tls: { ca: readFileSync(o.tlsCa), cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey), ...(o.serverName ? { serverName: o.serverName } : {}) } };
}

export function registerStreamCommands(ctl: Command, connect: () => CellAgentClient): void {
  ctl
    .command('logs')
    .description("print a unit's logs (stdout and stderr, in order), like kubectl logs")
    .argument('<unit>', 'unit (container) name')
    .option('-f, --follow', 'keep printing new output until the unit instance ends (Ctrl-C stops)')
    .option('--tail <lines>', 'only the last N lines', intArg('--tail'))
    .option('--limit-bytes <n>', 'only the last N bytes', intArg('--limit-bytes'))
    .option('--since <duration>', 'only lines newer than this, e.g. 30s, 5m, 1h')
    .option('--since-time <time>', 'only lines at or after this RFC 3339 time')
    .option('--timestamps', 'prefix each line with its RFC 3339 nanosecond timestamp')
    .option('-p, --previous', 'the previous (terminated) instance of a restarted unit')
    .addHelpText(
      'after',
      '\nExamples:\n  cell-agent ctl --addr A --insecure-dev logs web --tail 100 -f\n  cell-agent ctl --addr A --insecure-dev logs web --previous --timestamps\n',
    )
    .action(async (unit: string, o: { follow?: boolean; tail?: number; limitBytes?: number; since?: string; sinceTime?: string; timestamps?: boolean; previous?: boolean }) => {
      let sinceTime: Date | undefined;
      if (o.sinceTime !== undefined) {
        sinceTime = new Date(o.sinceTime);
        if (Number.isNaN(sinceTime.getTime())) throw new Error(`--since-time: "${o.sinceTime}" is not an RFC 3339 time`);
      }
      const req = LogsRequest.fromPartial({
        container: unit,
        follow: o.follow ?? false,
        tailLines: o.tail,
        limitBytes: o.limitBytes,
        sinceSeconds: o.since !== undefined ? parseDuration(o.since) : undefined,
        sinceTime,
        timestamps: o.timestamps ?? false,
        previous: o.previous ?? false,
      });
      const client = connect();
      const run = runLogs(client, req);
      const onSigint = () => run.cancel();
      process.once('SIGINT', onSigint);
      try {
        await run.done;
      } finally {
        process.off('SIGINT', onSigint);
        client.close();
      }
    });

  ctl
    .command('exec')
    .description("run a command in a running unit, like kubectl exec; exits with the command's exit code")
    .argument('<unit>', 'unit (container) name')
    .argument('<command...>', 'command and arguments, after --')
    .option('-i, --stdin', 'pass stdin to the command')
    .option('-t, --tty', 'allocate a terminal (raw mode when stdin is a terminal; window size follows)')
    .addHelpText('after', '\nExamples:\n  cell-agent ctl --addr A --insecure-dev exec web -- ls -l /\n  cell-agent ctl --addr A --insecure-dev exec web -it -- sh\n')
    .action(async (unit: string, command: string[], o: { stdin?: boolean; tty?: boolean }) => {
      const client = connect();
      let code: number;
      try {
        code = await runExec(client, { unit, command, stdin: o.stdin ?? false, tty: o.tty ?? false });
      } finally {
        client.close();
      }
      // Let stdout drain, then leave with the remote exit code.
      process.stdout.write('', () => process.exit(code));
    });

  ctl
    .command('port-forward')
    .description('forward local TCP ports to ports in the pod, like kubectl port-forward; serves many connections at once')
    .argument('<mappings...>', 'LOCAL:REMOTE, :REMOTE (a free local port) or PORT (the same on both sides)')
    .option('--address <host>', 'local address to listen on', '127.0.0.1')
    .option('--no-stream-port', "always relay over PortForward gRPC streams, not the agent's stream port")
    .addHelpText(
      'after',
      '\nEach connection goes through the agent\'s port-forward stream port when it has one (a single-use\nticket from the API, then TLS with the same certificates, or plain TCP with --insecure-dev),\nelse over a PortForward gRPC stream. Each is announced as "Handling connection for PORT (path)".\n\nExamples:\n  cell-agent ctl --addr A --insecure-dev port-forward 8080:80\n  cell-agent ctl --addr A --insecure-dev port-forward :5432 9090\n',
    )
    .action(async (mappings: string[], o: { address: string; streamPort: boolean }) => {
      const parsed = mappings.map(parsePortMapping);
      const client = connect();
      const stream = o.streamPort ? streamPortAccess(ctl) : undefined;
      const fwds: Forwarding[] = [];
      for (const m of parsed) {
        const f = await forwardPort(client, {
          host: o.address,
          localPort: m.local,
          remotePort: m.remote,
          onError: (msg) => process.stderr.write(`port-forward ${m.remote}: ${msg}\n`),
          ...(stream ? { stream } : {}),
          onConnection: (path) => process.stdout.write(`Handling connection for ${m.remote} (${path})\n`),
        });
        fwds.push(f);
        process.stdout.write(`Forwarding from ${o.address}:${f.localPort} -> ${m.remote}\n`);
      }
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
      await Promise.all(fwds.map((f) => f.close()));
      client.close();
    });
}
