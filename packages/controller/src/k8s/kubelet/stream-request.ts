// What one streaming connection is for, independent of where it came from: the virtual node's
// kubelet API reads it from the URL (`/exec/NS/POD[/UID]/CONTAINER?command=…&input=1…`, below),
// the CRI shim from the single-use token its Exec/Attach/PortForward handed out (the CRI
// streaming server reads the request it cached, never the URL's query). streams.ts and
// ws-streams.ts serve either.
import type { Socket } from 'node:net';

export interface ExecStreamRequest {
  kind: 'exec' | 'attach';
  /** The Cello pod and its unit. */
  target: { ns: string; pod: string; container: string };
  /** exec only. */
  command: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  /** Ignored with a tty (a terminal has no separate stderr), as by the kubelet. */
  stderr: boolean;
  /** Who asked, recorded in the agent's audit log. */
  user: string;
}

export interface PortForwardStreamRequest {
  kind: 'portForward';
  target: { ns: string; pod: string };
  /**
   * The ports of a WebSocket port-forward (one data and one error channel each, in this order);
   * over SPDY each connection names its port in its stream headers, so this may be empty.
   */
  ports: number[];
  user: string;
}

export type StreamRequest = ExecStreamRequest | PortForwardStreamRequest;

/** A request that cannot be served, as the HTTP answer that says why. */
export interface StreamRefusal {
  code: number;
  reason: string;
  message: string;
}

/** An HTTP answer on a socket that was not upgraded (connection: close, or a keep-alive client sends its next request into it). */
export function refuse(socket: Socket, code: number, reason: string, message: string): void {
  const body = `${message}\n`;
  socket.end(`HTTP/1.1 ${code} ${reason}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

const truthy = (v: string | null) => v === '1' || v === 'true';

/** Ports of a WebSocket port-forward: `?port=80&port=8080` or `?port=80,8080`, as the kubelet's NewV4Options. */
export function parsePorts(values: string[]): number[] | string {
  if (values.length === 0) return 'query parameter "port" is required';
  const ports: number[] = [];
  for (const v of values) {
    for (const p of v.split(',')) {
      const n = /^\d{1,5}$/.test(p) ? Number(p) : NaN;
      if (!Number.isInteger(n) || n < 1 || n > 65535) return `port ${JSON.stringify(p)}: expected a port number from 1 to 65535`;
      ports.push(n);
    }
  }
  return ports;
}

/** The kubelet API's streaming URLs, as the virtual node serves them. */
export function kubeletStreamRequest(url: URL, websocket: boolean, user: string): StreamRequest | StreamRefusal {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const kind = parts[0];
  const q = url.searchParams;
  if (kind === 'exec' || kind === 'attach') {
    if (parts.length !== 4 && parts.length !== 5) return { code: 404, reason: 'Not Found', message: `expected /${kind}/NAMESPACE/POD[/UID]/CONTAINER` };
    return {
      kind,
      target: { ns: parts[1]!, pod: parts[2]!, container: parts[parts.length - 1]! },
      command: kind === 'exec' ? q.getAll('command') : [],
      tty: truthy(q.get('tty')),
      stdin: truthy(q.get('input')),
      stdout: truthy(q.get('output')),
      stderr: truthy(q.get('error')),
      user,
    };
  }
  if (kind === 'portForward') {
    if (parts.length !== 3 && parts.length !== 4) return { code: 404, reason: 'Not Found', message: 'expected /portForward/NAMESPACE/POD[/UID]' };
    let ports: number[] = [];
    if (websocket) {
      const p = parsePorts(q.getAll('port'));
      if (typeof p === 'string') return { code: 400, reason: 'Bad Request', message: p };
      ports = p;
    }
    return { kind, target: { ns: parts[1]!, pod: parts[2]! }, ports, user };
  }
  return { code: 404, reason: 'Not Found', message: `no streaming endpoint ${url.pathname}` };
}
