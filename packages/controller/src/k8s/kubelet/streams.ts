// The kubelet's streaming endpoints over SPDY/3.1 (WebSocket upgrades go to ws-streams.ts): /exec and /attach speak the remotecommand
// protocol (v4.channel.k8s.io, and v3/v2 for older clients: one SPDY stream per channel, named
// by the `streamType` header: error, stdin, stdout, stderr, resize), /portForward speaks
// portforward.k8s.io (a data and an error stream per connection, paired by `requestID`, the
// pod port in `port`). Each is relayed to the pod's cell agent through the controller's gRPC
// Exec/Attach/PortForward, as cellctl does. Every relay direction has backpressure: a side that
// does not read pauses the other (the gRPC call, or the SPDY session's socket) instead of the
// controller buffering without limit.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { PortForwardFrame } from '@cello/proto/cell';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import { SpdySession, type SpdyStream } from './spdy/index.js';
import { ExecRelay, resizeReader, type ExecSink } from './exec-relay.js';
import { WebSocketStreams } from './ws-streams.js';

const EXEC_PROTOCOLS = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'];
const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';
const STREAM_WAIT_MS = 30_000;
/** stdin a client may send before its exec has all its streams; beyond it, its stdin is paused. */
export const EARLY_STDIN_LIMIT = 1024 * 1024;

export interface StreamsOptions {
  controller: Controller;
  log: Logger;
}

/** Values of a header that clients may repeat or comma-join. */
function headerValues(v: string | string[] | undefined): string[] {
  return (Array.isArray(v) ? v : v ? [v] : [])
    .flatMap((x) => x.split(','))
    .map((x) => x.trim())
    .filter(Boolean);
}

function refuse(socket: Socket, code: number, reason: string, message: string): void {
  const body = `${message}\n`;
  socket.end(`HTTP/1.1 ${code} ${reason}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

const truthy = (v: string | null) => v === '1' || v === 'true';

export class SpdyStreams {
  private readonly sessions = new Set<SpdySession>();
  /** exec and attach over WebSocket, handed over by handle(). */
  private readonly websockets: WebSocketStreams;

  constructor(private readonly o: StreamsOptions) {
    this.websockets = new WebSocketStreams(o);
  }

  /** `user`: who the kubelet API authenticated (the API server's client, as a rule). */
  handle(req: IncomingMessage, socket: Socket, head: Buffer, user = ''): void {
    const url = new URL(req.url ?? '/', 'https://kubelet');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const kind = parts[0];
    const upgrade = (req.headers.upgrade ?? '').toLowerCase();
    if (upgrade === 'websocket') return this.websockets.handle(req, socket, head, user);
    if (upgrade !== 'spdy/3.1') {
      return refuse(socket, 400, 'Bad Request', `upgrade: this kubelet streams over SPDY/3.1 or WebSocket, not "${req.headers.upgrade ?? ''}"`);
    }
    const offered = headerValues(req.headers['x-stream-protocol-version']);
    let protocol: string | undefined;
    let target: { ns: string; pod: string; container?: string };
    if (kind === 'exec' || kind === 'attach') {
      if (parts.length !== 4 && parts.length !== 5) return refuse(socket, 404, 'Not Found', `expected /${kind}/NAMESPACE/POD[/UID]/CONTAINER`);
      target = { ns: parts[1]!, pod: parts[2]!, container: parts[parts.length - 1]! };
      protocol = EXEC_PROTOCOLS.find((p) => offered.includes(p)) ?? (offered.length === 0 ? 'channel.k8s.io' : undefined);
    } else if (kind === 'portForward') {
      if (parts.length !== 3 && parts.length !== 4) return refuse(socket, 404, 'Not Found', 'expected /portForward/NAMESPACE/POD[/UID]');
      target = { ns: parts[1]!, pod: parts[2]! };
      protocol = offered.includes(PORT_FORWARD_PROTOCOL) || offered.length === 0 ? PORT_FORWARD_PROTOCOL : undefined;
    } else {
      return refuse(socket, 404, 'Not Found', `no streaming endpoint ${url.pathname}`);
    }
    if (!protocol)
      return refuse(
        socket,
        403,
        'Forbidden',
        `x-stream-protocol-version: none of [${offered.join(', ')}] is supported; this kubelet speaks ${kind === 'portForward' ? PORT_FORWARD_PROTOCOL : EXEC_PROTOCOLS.join(', ')}`,
      );
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${protocol}\r\n\r\n`);
    socket.setNoDelay(true);
    if (head.length) socket.unshift(head);
    const session = new SpdySession(socket);
    this.sessions.add(session);
    session.on('close', () => this.sessions.delete(session));
    session.on('protocolError', (err: Error) => this.o.log.warn({ err: err.message }, 'spdy protocol error'));
    const log = this.o.log.child({ pod: `${target.ns}/${target.pod}`, stream: kind });
    if (kind === 'portForward') this.portForward(session, target, user, log);
    else this.exec(session, kind as 'exec' | 'attach', protocol, url.searchParams, target as Required<typeof target>, user, log);
  }

  private exec(
    session: SpdySession,
    kind: 'exec' | 'attach',
    protocol: string,
    q: URLSearchParams,
    t: { ns: string; pod: string; container: string },
    user: string,
    log: Logger,
  ): void {
    const tty = truthy(q.get('tty'));
    const wantStdin = truthy(q.get('input'));
    const wantStdout = truthy(q.get('output'));
    const wantStderr = truthy(q.get('error')) && !tty;
    const v3 = protocol === 'v4.channel.k8s.io' || protocol === 'v3.channel.k8s.io';
    const command = q.getAll('command');
    const expected = 1 + (wantStdin ? 1 : 0) + (wantStdout ? 1 : 0) + (wantStderr ? 1 : 0) + (tty && v3 ? 1 : 0);
    const s: Partial<Record<'error' | 'stdin' | 'stdout' | 'stderr' | 'resize', SpdyStream>> = {};
    let count = 0;
    let started = false;
    const early: Buffer[] = [];
    let earlyBytes = 0;
    let earlyEof = false;
    let relay: ExecRelay | undefined;
    const onResize = resizeReader((columns, rows) => relay?.resize(columns, rows), log);
    const timer = setTimeout(() => {
      if (!started) {
        log.warn({ got: count, expected }, 'exec: the client did not open its streams in time');
        session.close();
      }
    }, STREAM_WAIT_MS);
    timer.unref();
    const sink: ExecSink = {
      write: (stream, b, drained) => {
        const st = stream === 'stderr' ? (s.stderr ?? s.stdout) : s.stdout;
        if (!st || st.write(b)) return true;
        st.once('drain', drained);
        return false;
      },
      finish: (status) => {
        const e = s.error;
        if (e) e.end(protocol === 'v4.channel.k8s.io' ? JSON.stringify(status) : (status.message ?? ''));
        s.stdout?.end();
        s.stderr?.end();
        // Close once the frames are out; the client half-closes and resets its side.
        setTimeout(() => session.close(), 50).unref();
      },
    };
    const sendStdin = (b: Buffer) => {
      if (!relay!.stdin(b, () => s.stdin?.resume())) s.stdin?.pause();
    };
    const start = () => {
      started = true;
      clearTimeout(timer);
      relay = new ExecRelay(this.o.controller, t, { kind, command, tty, stdin: wantStdin, user }, sink);
      for (const b of early.splice(0)) sendStdin(b);
      earlyBytes = 0;
      s.stdin?.resume();
      if (earlyEof) relay.stdinEof();
    };
    session.on('stream', (st: SpdyStream) => {
      const type = st.header('streamtype') as keyof typeof s | undefined;
      if (!type || !['error', 'stdin', 'stdout', 'stderr', 'resize'].includes(type)) {
        st.cancel();
        return;
      }
      s[type] = st;
      count++;
      if (type === 'stdin') {
        st.on('data', (b: Buffer) => {
          if (relay) return sendStdin(b);
          early.push(b);
          earlyBytes += b.length;
          if (earlyBytes >= EARLY_STDIN_LIMIT) st.pause(); // resumed by start()
        });
        st.on('end', () => {
          if (relay) relay.stdinEof();
          else earlyEof = true;
        });
      } else if (type === 'resize') st.on('data', onResize);
      if (count >= expected && !started) start();
    });
    session.on('close', () => {
      clearTimeout(timer);
      relay?.cancel();
    });
  }

  private portForward(session: SpdySession, t: { ns: string; pod: string }, user: string, log: Logger): void {
    interface Conn {
      data?: SpdyStream;
      error?: SpdyStream;
      call?: ReturnType<Controller['client']['portForward']>;
    }
    const conns = new Map<string, Conn>();
    const open = (id: string, port: number, c: Conn) => {
      const call = this.o.controller.client.portForward();
      c.call = call;
      call.write({ frame: { $case: 'target', value: { namespace: t.ns, name: t.pod } } });
      call.write({ frame: { $case: 'forward', value: { frame: { $case: 'start', value: { port, requestedBy: user } } } } });
      c.data!.on('data', (b: Buffer) => {
        if (call.write({ frame: { $case: 'forward', value: { frame: { $case: 'data', value: b } } } })) return;
        c.data!.pause();
        call.once('drain', () => c.data!.resume());
      });
      c.data!.on('end', () => call.write({ frame: { $case: 'forward', value: { frame: { $case: 'closeWrite', value: true } } } }));
      c.data!.on('close', () => {
        call.end();
        conns.delete(id);
      });
      const fail = (msg: string) => {
        log.debug({ port, err: msg }, 'port-forward connection failed');
        c.error?.end(`error forwarding port ${port} to pod ${t.pod}: ${msg}`);
        c.data?.end();
      };
      call.on('data', (f: PortForwardFrame) => {
        const fr = f.frame;
        if (!fr) return;
        if (fr.$case === 'data') {
          if (!c.data!.write(Buffer.from(fr.value))) {
            call.pause();
            c.data!.once('drain', () => call.resume());
          }
        } else if (fr.$case === 'closeWrite') c.data!.end();
        else if (fr.$case === 'error') fail(fr.value);
      });
      call.on('error', (err: ServiceError) => {
        if (err.code !== GrpcStatus.CANCELLED) fail(err.details || err.message);
      });
      call.on('end', () => {
        c.data?.end();
        c.error?.end();
      });
    };
    session.on('stream', (st: SpdyStream) => {
      const type = st.header('streamtype');
      const id = st.header('requestid') ?? '';
      const port = Number(st.header('port'));
      if ((type !== 'data' && type !== 'error') || !Number.isInteger(port) || port <= 0 || port > 65535) {
        st.cancel();
        return;
      }
      const c = conns.get(id) ?? {};
      conns.set(id, c);
      c[type] = st;
      if (c.data && c.error && !c.call) open(id, port, c);
    });
    session.on('close', () => {
      for (const c of conns.values()) c.call?.cancel();
      conns.clear();
    });
  }

  /** Open sessions and the bytes waiting for their clients: bounded by each session's high-water mark plus a message in flight. */
  stats(): { sessions: number; bufferedBytes: number } {
    let bufferedBytes = 0;
    for (const s of this.sessions) bufferedBytes += s.bufferedBytes();
    return { sessions: this.sessions.size, bufferedBytes };
  }

  close(): void {
    this.websockets.close();
    for (const s of this.sessions) s.close();
    this.sessions.clear();
  }
}
