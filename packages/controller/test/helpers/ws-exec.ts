// A remotecommand client over WebSocket (the wsstream channel protocols), as the e2e suite and
// client-go's WebSocket executor speak it: for tests of the kubelet API's /exec and /attach.
import WebSocket from 'ws';

export interface WsExecResult {
  /** The protocol the server chose. */
  protocol: string;
  stdout: string;
  stderr: string;
  /** What came on the error channel (3): a Status in JSON for v4/v5, a message before. */
  error: string;
  /** Every message, as [channel, bytes], in order. */
  messages: [number, number][];
}

export interface WsExecOptions {
  protocols: string[];
  tls?: { ca: string; cert?: string; key?: string; servername?: string };
  headers?: Record<string, string>;
  /** Sent on stdin (channel 0) once open; with v5, stdin is then closed ([255, 0]). */
  stdin?: string;
  timeoutMs?: number;
}

/** Runs one exec to its end (the server closes); rejects on an HTTP refusal with its status and body. */
export function wsExec(url: string, o: WsExecOptions): Promise<WsExecResult> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, o.protocols, {
      ...(o.tls ? { ca: o.tls.ca, cert: o.tls.cert, key: o.tls.key, servername: o.tls.servername } : {}),
      headers: o.headers ?? {},
      perMessageDeflate: false,
    });
    const r: WsExecResult = { protocol: '', stdout: '', stderr: '', error: '', messages: [] };
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`websocket exec ${url}: no end in ${o.timeoutMs ?? 30_000} ms; so far ${JSON.stringify(r)}`));
    }, o.timeoutMs ?? 30_000);
    const base64 = () => r.protocol.includes('base64');
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (b: Buffer) => (body += b.toString()));
      res.on('end', () => {
        clearTimeout(timer);
        req.destroy();
        reject(Object.assign(new Error(`websocket exec refused: ${res.statusCode} ${body}`), { status: res.statusCode, body }));
      });
    });
    ws.on('open', () => {
      r.protocol = ws.protocol;
      if (o.stdin === undefined) return;
      const data = Buffer.from(o.stdin);
      ws.send(base64() ? `0${data.toString('base64')}` : Buffer.concat([Buffer.from([0]), data]));
      if (r.protocol === 'v5.channel.k8s.io') ws.send(Buffer.from([255, 0]));
    });
    ws.on('message', (raw: Buffer, isBinary: boolean) => {
      let channel = raw[0]!;
      let data = raw.subarray(1);
      if (!isBinary) {
        channel -= 48;
        data = Buffer.from(data.toString('latin1'), 'base64');
      }
      r.messages.push([channel, data.length]);
      if (channel === 1) r.stdout += data.toString();
      else if (channel === 2) r.stderr += data.toString();
      else if (channel === 3) r.error += data.toString();
    });
    ws.on('close', () => {
      clearTimeout(timer);
      resolve(r);
    });
    ws.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
