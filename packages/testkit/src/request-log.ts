// A relay on loopback in front of a real server (a registry) that records every request it
// passes on: how tests count registry round trips (manifest GETs, blob GETs) without a fake.
import { createServer, request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LoggedRequest {
  method: string;
  path: string;
  at: number;
}

export interface RequestLog {
  /** `127.0.0.1:PORT`: use it as the registry part of image references. */
  host: string;
  url: string;
  requests: LoggedRequest[];
  /** Requests whose path matches, optionally of one method. */
  count(path: RegExp, method?: string): number;
  /** While true, every request is answered 503 (a registry outage) and still logged. */
  down: boolean;
  /** Most requests open at once since the last resetInFlight(): how tests see a concurrency bound. */
  maxInFlight: number;
  resetInFlight(): void;
  stop(): Promise<void>;
}

/** Starts the relay to `target` (http://host:port); the caller stops it. */
export async function startRequestLog(target: string): Promise<RequestLog> {
  const t = new URL(target);
  const requests: LoggedRequest[] = [];
  let inFlight = 0;
  const log: RequestLog = {
    host: '',
    url: '',
    requests,
    down: false,
    maxInFlight: 0,
    resetInFlight: () => {
      log.maxInFlight = inFlight;
    },
    count: (path, method) => requests.filter((r) => path.test(r.path) && (!method || r.method === method)).length,
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  const server = createServer((req: IncomingMessage, res) => {
    requests.push({ method: req.method ?? '', path: req.url ?? '', at: Date.now() });
    inFlight++;
    log.maxInFlight = Math.max(log.maxInFlight, inFlight);
    res.once('close', () => inFlight--);
    if (log.down) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('down for the test');
      req.resume();
      return;
    }
    const headers = { ...req.headers, host: t.host };
    const up = request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502).end(err.message);
      else res.destroy(err);
    });
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  log.host = `127.0.0.1:${port}`;
  log.url = `http://${log.host}`;
  return log;
}
