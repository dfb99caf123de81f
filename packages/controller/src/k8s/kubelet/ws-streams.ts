// The kubelet's /exec and /attach over WebSocket (the kubelet's wsstream protocols): the API
// server proxies a client's WebSocket upgrade here as it is (the e2e suite's `channel.k8s.io`,
// clients that skip SPDY). Each message is one channel byte and its data: 0 stdin, 1 stdout,
// 2 stderr, 3 error (the final Status), 4 resize; the base64 protocols send text messages, the
// channel as an ASCII digit and the data in base64; v5 adds message [255, channel] to close a
// channel (stdin's EOF). Relayed to the agent by exec-relay.ts, as over SPDY.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import { ExecRelay, resizeReader, type ExecSink, type ExecStatus } from './exec-relay.js';

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

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const ERROR = 3;
const RESIZE = 4;
const STREAM_CLOSE = 255;
/** Output waiting for a slow client beyond which the agent's call is paused. */
const HIGH_WATER = 1024 * 1024;

const truthy = (v: string | null) => v === '1' || v === 'true';

function refuse(socket: Socket, code: number, reason: string, message: string): void {
  const body = `${message}\n`;
  socket.end(`HTTP/1.1 ${code} ${reason}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

export class WebSocketStreams {
  private readonly wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: true });

  constructor(private readonly o: { controller: Controller; log: Logger }) {}

  /** An authenticated upgrade with `upgrade: websocket`; `user`: who the kubelet API authenticated. */
  handle(req: IncomingMessage, socket: Socket, head: Buffer, user: string): void {
    const url = new URL(req.url ?? '/', 'https://kubelet');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const kind = parts[0];
    if (kind !== 'exec' && kind !== 'attach') {
      return refuse(socket, 400, 'Bad Request', `${url.pathname}: this kubelet serves exec and attach over WebSocket; port-forward over SPDY/3.1`);
    }
    if (parts.length !== 4 && parts.length !== 5) return refuse(socket, 404, 'Not Found', `expected /${kind}/NAMESPACE/POD[/UID]/CONTAINER`);
    const offered = (req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean);
    // As the kubelet's handshake: the first protocol the client offers that it speaks.
    const protocol = offered.length === 0 ? '' : offered.find((p) => p in PROTOCOLS);
    if (protocol === undefined) {
      return refuse(socket, 403, 'Forbidden', `sec-websocket-protocol: none of [${offered.join(', ')}] is supported; this kubelet speaks ${WS_EXEC_PROTOCOLS.join(', ')}`);
    }
    const target = { ns: parts[1]!, pod: parts[2]!, container: parts[parts.length - 1]! };
    const log = this.o.log.child({ pod: `${target.ns}/${target.pod}`, stream: `${kind} (websocket)` });
    this.wss.handleUpgrade(req, socket, head, (ws) => this.exec(ws, kind, protocol, url.searchParams, target, user, log));
  }

  private exec(ws: WebSocket, kind: 'exec' | 'attach', protocol: string, q: URLSearchParams, t: { ns: string; pod: string; container: string }, user: string, log: Logger): void {
    const p = PROTOCOLS[protocol]!;
    const tty = truthy(q.get('tty'));
    const wantStdin = truthy(q.get('input'));
    const wantStdout = truthy(q.get('output'));
    // As the kubelet: a terminal has no separate stderr.
    const wantStderr = truthy(q.get('error')) && !tty;
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
    const relay = new ExecRelay(this.o.controller, t, { kind, command: q.getAll('command'), tty, stdin: wantStdin, user }, sink);
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

  /** Open connections. */
  get connections(): number {
    return this.wss.clients.size;
  }

  close(): void {
    for (const ws of this.wss.clients) ws.terminate();
    this.wss.close();
  }
}
