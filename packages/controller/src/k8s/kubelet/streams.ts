// The kubelet's streaming endpoints over SPDY/3.1 (WebSocket upgrades go to ws-streams.ts), for the
// virtual node's kubelet API (handle: the request in the URL) and for the CRI shim's streaming
// server (serve: the request a token stands for; @cello/controller/streaming). Exec and attach speak the remotecommand
// protocol (v4.channel.k8s.io, and v3/v2 for older clients: one SPDY stream per channel, named
// by the `streamType` header: error, stdin, stdout, stderr, resize), /portForward speaks
// portforward.k8s.io (a data and an error stream per connection, paired by `requestID`, the
// pod port in `port`). Each is relayed to the pod's cell agent through the controller's gRPC
// Exec/Attach/PortForward, as cellctl does. Every relay direction has backpressure: a side that
// does not read pauses the other (the gRPC call, or the SPDY session's socket) instead of the
// controller buffering without limit.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import { SpdySession, type SpdyStream } from './spdy/index.js';
import { ExecRelay, resizeReader, type ExecSink } from './exec-relay.js';
import { WebSocketStreams } from './ws-streams.js';
import { PortRelay } from './port-relay.js';
import { closeWhenIdle, DEFAULT_STREAM_IDLE_TIMEOUT_MS } from './idle-timeout.js';
import { kubeletStreamRequest, type ExecStreamRequest, type PortForwardStreamRequest, type StreamRequest, refuse } from './stream-request.js';

const EXEC_PROTOCOLS = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'];
const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';
const STREAM_WAIT_MS = 30_000;
/** stdin a client may send before its exec has all its streams; beyond it, its stdin is paused. */
export const EARLY_STDIN_LIMIT = 1024 * 1024;

export interface StreamsOptions {
  controller: Controller;
  log: Logger;
  /** An established stream with no traffic either way this long is closed (default: the kubelet's 4 h; 0: never). */
  idleTimeoutMs?: number;
}

/** Values of a header that clients may repeat or comma-join. */
function headerValues(v: string | string[] | undefined): string[] {
  return (Array.isArray(v) ? v : v ? [v] : [])
    .flatMap((x) => x.split(','))
    .map((x) => x.trim())
    .filter(Boolean);
}

export class SpdyStreams {
  private readonly sessions = new Set<SpdySession>();
  /** exec, attach and port-forward over WebSocket, handed over by serve(). */
  private readonly websockets: WebSocketStreams;

  private readonly idleMs: number;

  constructor(private readonly o: StreamsOptions) {
    this.idleMs = o.idleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    this.websockets = new WebSocketStreams({ ...o, idleTimeoutMs: this.idleMs }, (stream, r) =>
      this.portForward(this.session(stream), r, this.o.log.child({ pod: `${r.target.ns}/${r.target.pod}`, stream: 'portForward (spdy in websocket)' })),
    );
  }

  /** The virtual node's kubelet API: the request is in the URL. `user`: who the kubelet API authenticated (the API server's client, as a rule). */
  handle(req: IncomingMessage, socket: Socket, head: Buffer, user = ''): void {
    const url = new URL(req.url ?? '/', 'https://kubelet');
    const r = kubeletStreamRequest(url, (req.headers.upgrade ?? '').toLowerCase() === 'websocket', user);
    if ('code' in r) return refuse(socket, r.code, r.reason, r.message);
    this.serve(req, socket, head, r);
  }

  /**
   * Serves an upgrade request for `r`, over SPDY/3.1 or WebSocket as the client asks: what the
   * kubelet's streaming server (and containerd's, the same package) does once it knows the request.
   */
  serve(req: IncomingMessage, socket: Socket, head: Buffer, r: StreamRequest): void {
    const upgrade = (req.headers.upgrade ?? '').toLowerCase();
    if (upgrade === 'websocket') return this.websockets.serve(req, socket, head, r);
    if (upgrade !== 'spdy/3.1') {
      return refuse(socket, 400, 'Bad Request', `upgrade: this server streams over SPDY/3.1 or WebSocket, not "${req.headers.upgrade ?? ''}"`);
    }
    const offered = headerValues(req.headers['x-stream-protocol-version']);
    const protocol =
      r.kind === 'portForward'
        ? offered.includes(PORT_FORWARD_PROTOCOL) || offered.length === 0
          ? PORT_FORWARD_PROTOCOL
          : undefined
        : (EXEC_PROTOCOLS.find((p) => offered.includes(p)) ?? (offered.length === 0 ? 'channel.k8s.io' : undefined));
    if (!protocol)
      return refuse(
        socket,
        403,
        'Forbidden',
        `x-stream-protocol-version: none of [${offered.join(', ')}] is supported; this server speaks ${r.kind === 'portForward' ? PORT_FORWARD_PROTOCOL : EXEC_PROTOCOLS.join(', ')}`,
      );
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${protocol}\r\n\r\n`);
    socket.setNoDelay(true);
    if (head.length) socket.unshift(head);
    const session = this.session(socket);
    const log = this.o.log.child({ pod: `${r.target.ns}/${r.target.pod}`, stream: r.kind });
    closeWhenIdle(socket, this.idleMs, log);
    if (r.kind === 'portForward') this.portForward(session, r, log);
    else this.exec(session, protocol, r, log);
  }

  /** A SPDY session on a socket, or on a WebSocket tunnel's byte stream. */
  private session(stream: Duplex): SpdySession {
    const session = new SpdySession(stream);
    this.sessions.add(session);
    session.on('close', () => this.sessions.delete(session));
    session.on('protocolError', (err: Error) => this.o.log.warn({ err: err.message }, 'spdy protocol error'));
    return session;
  }

  private exec(session: SpdySession, protocol: string, r: ExecStreamRequest, log: Logger): void {
    const { kind, tty, command, user, target: t } = r;
    const wantStdin = r.stdin;
    const wantStdout = r.stdout;
    const wantStderr = r.stderr && !tty;
    const v3 = protocol === 'v4.channel.k8s.io' || protocol === 'v3.channel.k8s.io';
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

  private portForward(session: SpdySession, r: PortForwardStreamRequest, log: Logger): void {
    interface Conn {
      data?: SpdyStream;
      error?: SpdyStream;
      relay?: PortRelay;
    }
    const conns = new Map<string, Conn>();
    const open = (id: string, port: number, c: Conn) => {
      const data = c.data!;
      const relay = new PortRelay(this.o.controller, r.target, port, r.user, {
        write: (b, drained) => {
          if (data.write(b)) return true;
          data.once('drain', drained);
          return false;
        },
        end: () => {
          data.end();
          c.error?.end();
        },
        fail: (msg) => {
          log.debug({ port, err: msg }, 'port-forward connection failed');
          c.error?.end(msg);
          data.end();
        },
      });
      c.relay = relay;
      data.on('data', (b: Buffer) => {
        if (!relay.data(b, () => data.resume())) data.pause();
      });
      data.on('end', () => relay.closeWrite());
      data.on('close', () => {
        relay.end();
        conns.delete(id);
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
      if (c.data && c.error && !c.relay) open(id, port, c);
    });
    session.on('close', () => {
      for (const c of conns.values()) c.relay?.cancel();
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
