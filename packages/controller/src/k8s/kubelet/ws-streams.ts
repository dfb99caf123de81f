// The kubelet's exec, attach and port-forward over WebSocket (the kubelet's wsstream protocols):
// the API server proxies a client's WebSocket upgrade here as it is (the e2e suite's
// `channel.k8s.io`, clients that skip SPDY). Each message is one channel byte and its data.
// Exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error (the final Status), 4 resize; v5 adds
// message [255, channel] to close a channel (stdin's EOF). Port-forward: channels 2i (data) and
// 2i+1 (error) for the i-th requested port, each opened by the port as 2 little-endian bytes.
// The base64 protocols send text messages, the channel as an ASCII digit and the data in base64.
// Port-forward may also come as SPDY tunnelled in WebSocket (SPDY_TUNNEL_PROTOCOL, below).
// Relayed to the agent by exec-relay.ts and port-relay.ts, as over SPDY.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream, type RawData, type WebSocket } from 'ws';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import { ExecRelay, resizeReader, type ExecSink, type ExecStatus } from './exec-relay.js';
import { PortRelay } from './port-relay.js';
import { closeWhenIdle, DEFAULT_STREAM_IDLE_TIMEOUT_MS } from './idle-timeout.js';
import { type ExecStreamRequest, type PortForwardStreamRequest, type StreamRequest, refuse } from './stream-request.js';

/** The kubelet's (remotecommand/websocket.go), and v5 for clients that talk to a node directly; "" when the client names none. */
const PROTOCOLS: Record<string, { base64: boolean; statusJson: boolean; streamClose: boolean }> = {
  '': { base64: false, statusJson: false, streamClose: false },
  'channel.k8s.io': { base64: false, statusJson: false, streamClose: false },
  'base64.channel.k8s.io': { base64: true, statusJson: false, streamClose: false },
  'v4.channel.k8s.io': { base64: false, statusJson: true, streamClose: false },
  'v4.base64.channel.k8s.io': { base64: true, statusJson: true, streamClose: false },
  'v5.channel.k8s.io': { base64: false, statusJson: true, streamClose: true },
};
export const WS_EXEC_PROTOCOLS = Object.keys(PROTOCOLS).filter(Boolean);
/** The kubelet's port-forward protocols (portforward/websocket.go); "" when the client names none. */
const PORT_FORWARD_PROTOCOLS: Record<string, { base64: boolean }> = {
  '': { base64: false },
  'v4.channel.k8s.io': { base64: false },
  'v4.base64.channel.k8s.io': { base64: true },
};
/**
 * Port-forward's SPDY tunnelled in WebSocket binary messages (client-go's tunneling dialer,
 * `kubectl port-forward` and `crictl port-forward --transport websocket`): the WebSocket is the
 * SPDY session's byte stream, nothing else changes. The API server unwraps it before a kubelet;
 * clients that reach this server directly need it here.
 */
export const SPDY_TUNNEL_PROTOCOL = 'SPDY/3.1+portforward.k8s.io';
export const WS_PORT_FORWARD_PROTOCOLS = [...Object.keys(PORT_FORWARD_PROTOCOLS).filter(Boolean), SPDY_TUNNEL_PROTOCOL];

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const ERROR = 3;
const RESIZE = 4;
const STREAM_CLOSE = 255;
/** Output waiting for a slow client beyond which the agent's call is paused. */
const HIGH_WATER = 1024 * 1024;

export class WebSocketStreams {
  /** Upgrades to the SPDY tunnel (see the constructor). */
  private readonly tunnelled = new WeakSet<IncomingMessage>();
  /** The protocol serve() chose for each upgrade, for the handshake's answer. */
  private readonly chosen = new WeakMap<IncomingMessage, string>();
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    clientTracking: true,
    handleProtocols: (_offered, req) => this.chosen.get(req) || false,
  });

  /** `tunnel`: a SPDY port-forward session over `stream` (streams.ts runs it). */
  constructor(
    private readonly o: { controller: Controller; log: Logger; idleTimeoutMs?: number },
    private readonly tunnel?: (stream: Duplex, r: PortForwardStreamRequest) => void,
  ) {
    // The tunnel's protocol has a "/", which `ws` refuses in a subprotocol (RFC 6455 wants a
    // token); client-go sends it regardless, so the tunnel's handshake answers it by hand.
    this.wss.on('headers', (headers: string[], req: IncomingMessage) => {
      if (this.tunnelled.has(req)) headers.push(`Sec-WebSocket-Protocol: ${SPDY_TUNNEL_PROTOCOL}`);
    });
  }

  /** An upgrade with `upgrade: websocket` for `r` (streams.ts' serve hands it over). */
  serve(req: IncomingMessage, socket: Socket, head: Buffer, r: StreamRequest): void {
    const offered = (req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean);
    if (r.kind === 'portForward' && this.tunnel && offered.includes(SPDY_TUNNEL_PROTOCOL)) {
      const tunnel = this.tunnel;
      this.tunnelled.add(req);
      delete req.headers['sec-websocket-protocol'];
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        this.idle(socket, r);
        tunnel(createWebSocketStream(ws), r);
      });
      return;
    }
    const table = r.kind === 'portForward' ? PORT_FORWARD_PROTOCOLS : PROTOCOLS;
    // As the kubelet's handshake: the first protocol the client offers that it speaks.
    const protocol = offered.length === 0 ? '' : offered.find((p) => p in table);
    if (protocol === undefined) {
      const speaks = r.kind === 'portForward' ? WS_PORT_FORWARD_PROTOCOLS : WS_EXEC_PROTOCOLS;
      return refuse(socket, 403, 'Forbidden', `sec-websocket-protocol: none of [${offered.join(', ')}] is supported; this server speaks ${speaks.join(', ')}`);
    }
    if (r.kind === 'portForward' && r.ports.length === 0)
      return refuse(socket, 400, 'Bad Request', 'port-forward over WebSocket needs the ports up front (query parameter "port")');
    const log = this.o.log.child({ pod: `${r.target.ns}/${r.target.pod}`, stream: `${r.kind} (websocket)` });
    this.chosen.set(req, protocol);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.idle(socket, r);
      if (r.kind === 'portForward') this.portForward(ws, protocol, r, log);
      else this.exec(ws, protocol, r, log);
    });
  }

  /** After `ws` adopted the socket (it clears the socket's timeout when it does). */
  private idle(socket: Socket, r: StreamRequest): void {
    closeWhenIdle(socket, this.o.idleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS, this.o.log.child({ pod: `${r.target.ns}/${r.target.pod}`, stream: `${r.kind} (websocket)` }));
  }

  private exec(ws: WebSocket, protocol: string, r: ExecStreamRequest, log: Logger): void {
    const p = PROTOCOLS[protocol]!;
    const { tty, kind, command, user, target: t } = r;
    const wantStdin = r.stdin;
    const wantStdout = r.stdout;
    // As the kubelet: a terminal has no separate stderr.
    const wantStderr = r.stderr && !tty;
    let pending = 0;
    const send = (channel: number, data: Buffer, done?: () => void) => {
      if (ws.readyState !== ws.OPEN) return;
      const frame = p.base64 ? `${String.fromCharCode(48 + channel)}${data.toString('base64')}` : Buffer.concat([Buffer.from([channel]), data]);
      pending += data.length;
      ws.send(frame, { binary: !p.base64 }, () => {
        pending -= data.length;
        done?.();
      });
    };
    // The kubelet's first message: an empty one on the lowest channel the client writes to, so it knows the stream is up.
    send(wantStdout ? STDOUT : wantStderr ? STDERR : ERROR, Buffer.alloc(0));
    const sink: ExecSink = {
      write: (stream, b, drained) => {
        const channel = stream === 'stderr' && wantStderr ? STDERR : STDOUT;
        if (channel === STDOUT && !wantStdout) return true;
        let slow = false;
        send(channel, b, () => {
          if (slow && pending < HIGH_WATER) {
            slow = false;
            drained();
          }
        });
        slow = pending >= HIGH_WATER;
        return !slow;
      },
      finish: (status: ExecStatus) => {
        // v4 and v5 always end with a Status; the older protocols only with a failure's message.
        if (p.statusJson) send(ERROR, Buffer.from(JSON.stringify(status)));
        else if (status.status !== 'Success') send(ERROR, Buffer.from(status.message ?? 'error'));
        ws.close(1000);
      },
    };
    const relay = new ExecRelay(this.o.controller, t, { kind, command, tty, stdin: wantStdin, user }, sink);
    const onResize = resizeReader((columns, rows) => relay.resize(columns, rows), log);
    let stdinOpen = wantStdin;
    ws.on('message', (raw: RawData, isBinary: boolean) => {
      let data = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.from(raw as Buffer);
      if (data.length === 0) return;
      if (p.streamClose && isBinary && data[0] === STREAM_CLOSE) {
        if (data.length !== 2) {
          log.debug({ bytes: data.length }, 'websocket: a stream close message is two bytes; closing');
          ws.close(1002, 'protocol error: stream close is [255, channel]');
          return;
        }
        if (data[1] === STDIN && stdinOpen) {
          stdinOpen = false;
          relay.stdinEof();
        }
        return;
      }
      let channel = data[0]!;
      if (p.base64) {
        channel -= 48;
        data = Buffer.from(data.subarray(1).toString('latin1'), 'base64');
      } else data = data.subarray(1);
      if (channel === STDIN && stdinOpen) {
        if (!relay.stdin(data, () => ws.resume())) ws.pause();
      } else if (channel === RESIZE) onResize(data);
    });
    ws.on('close', () => relay.cancel());
    ws.on('error', (err) => log.debug({ err: err.message }, 'websocket error'));
  }

  private portForward(ws: WebSocket, protocol: string, r: PortForwardStreamRequest, log: Logger): void {
    const { base64 } = PORT_FORWARD_PROTOCOLS[protocol]!;
    let pending = 0;
    const send = (channel: number, data: Buffer, done?: () => void) => {
      if (ws.readyState !== ws.OPEN) return;
      const frame = base64 ? `${String.fromCharCode(48 + channel)}${data.toString('base64')}` : Buffer.concat([Buffer.from([channel]), data]);
      pending += data.length;
      ws.send(frame, { binary: !base64 }, () => {
        pending -= data.length;
        done?.();
      });
    };
    let open = r.ports.length;
    // As the kubelet: the connection ends when every port's forward has ended.
    const ended = () => {
      if (--open === 0) ws.close(1000);
    };
    const relays = r.ports.map((port, i) => {
      const data = 2 * i;
      const error = data + 1;
      const portBytes = Buffer.alloc(2);
      portBytes.writeUInt16LE(port);
      send(data, portBytes);
      send(error, portBytes);
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        ended();
      };
      return new PortRelay(this.o.controller, r.target, port, r.user, {
        write: (b, drained) => {
          let slow = false;
          send(data, b, () => {
            if (slow && pending < HIGH_WATER) {
              slow = false;
              drained();
            }
          });
          slow = pending >= HIGH_WATER;
          return !slow;
        },
        end: finish,
        fail: (msg) => {
          log.debug({ port, err: msg }, 'port-forward connection failed');
          send(error, Buffer.from(msg));
          finish();
        },
      });
    });
    ws.on('message', (raw: RawData) => {
      let buf = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.from(raw as Buffer);
      if (buf.length === 0) return;
      let channel = buf[0]!;
      if (base64) {
        channel -= 48;
        buf = Buffer.from(buf.subarray(1).toString('latin1'), 'base64');
      } else buf = buf.subarray(1);
      // Only data channels are read; the error channels are the server's to write.
      const relay = channel % 2 === 0 ? relays[channel / 2] : undefined;
      if (relay && buf.length && !relay.data(buf, () => ws.resume())) ws.pause();
    });
    ws.on('close', () => {
      for (const relay of relays) relay.cancel();
    });
    ws.on('error', (err) => log.debug({ err: err.message }, 'websocket error'));
  }

  /** Open connections. */
  get connections(): number {
    return this.wss.clients.size;
  }

  close(): void {
    for (const ws of this.wss.clients) ws.terminate();
    this.wss.close();
  }
}
