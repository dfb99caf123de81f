// The kubelet API the API server calls for `kubectl logs/exec/attach/port-forward/top`: HTTPS
// with a serving certificate, clients authenticated by certificates from the configured client
// CA (the API server's --kubelet-client-certificate) or bearer tokens, and every one authorized
// by the API server (kubelet-auth.ts). Streams are relayed through the
// controller's gRPC API to the pod's cell agent, as cellctl's are.
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { LogsRequest, type LogChunk, type LogEntry } from '@cello/proto/cell';
import type { Logger } from '../../obs/logger.js';
import type { Controller } from '../controller-client.js';
import type { KPod } from '../node/manifest.js';
import type { AgentAccess } from '../../agents/pool.js';
import { collectStats, resourceMetrics, summary } from './stats.js';
import { KubeletAuth } from './auth.js';
import { httpStatusOf } from './http-status.js';
import { runningPods } from './running-pods.js';
import { LABEL_NODE } from '../node/manifest.js';
import type { VirtualNodeMetrics } from '../metrics.js';
import type { KubeRest } from '../client/rest.js';

export interface KubeletServerOptions {
  cert: string;
  key: string;
  /** PEM of the CA whose client certificates may call (the API server's kubelet client CA). */
  clientCA: string;
  /** Client certificate common names allowed, on top of RBAC; empty: no restriction beyond RBAC. */
  allowedCNs?: string[];
  controller: Controller;
  nodeName: string;
  pods: () => KPod[];
  metrics?: VirtualNodeMetrics;
  /** For TokenReview/SubjectAccessReview; absent: only certificates named in allowedCNs are served. */
  rest?: KubeRest;
  /** How cell agents are reached for /stats/summary and /metrics/resource; absent: 501. */
  agents?: AgentAccess;
  log: Logger;
  /** Upgrade handlers for exec/attach/portForward (the SPDY layer). */
  onUpgrade?: (req: IncomingMessage, socket: Socket, head: Buffer, user: string) => void;
}

const NL = Buffer.from('\n');

/** RFC 3339 with nanoseconds, as the kubelet prints with --timestamps. */
export function rfc3339Nano(e: LogEntry): string {
  const d = new Date(e.timeSeconds * 1000).toISOString().slice(0, 19);
  return `${d}.${String(e.timeNanos).padStart(9, '0')}Z`;
}

export class KubeletServer {
  private server?: Server;
  private readonly started = new Date().toISOString();

  private readonly auth: KubeletAuth;

  constructor(private readonly o: KubeletServerOptions) {
    this.auth = new KubeletAuth({ nodeName: o.nodeName, ...(o.allowedCNs ? { allowedCNs: o.allowedCNs } : {}), ...(o.rest ? { rest: o.rest } : {}) });
  }

  async listen(host: string, port: number): Promise<number> {
    const server = createServer({ cert: this.o.cert, key: this.o.key, ca: this.o.clientCA, requestCert: true, rejectUnauthorized: false }, (req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.o.log.warn({ err: err.message, url: req.url }, 'kubelet API request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`${err.message}\n`);
      });
    });
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.auth.check(req).then(
        (a) => {
          if (!a.ok) {
            const body = `${a.message}\n`;
            // connection: close, or a keep-alive client sends its next request into this closed socket.
            socket.end(
              `HTTP/1.1 ${a.code} ${a.code === 401 ? 'Unauthorized' : 'Forbidden'}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
            );
            return;
          }
          if (!this.o.onUpgrade) {
            socket.end('HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
            return;
          }
          this.o.metrics?.kubeletRequests.inc({ endpoint: (req.url ?? '/').split(/[/?]/)[1] ?? 'other', code: '101' });
          this.o.onUpgrade(req, socket, head, a.user);
        },
        (err: Error) => socket.end(`HTTP/1.1 500 Internal Server Error\r\ncontent-length: ${Buffer.byteLength(err.message)}\r\nconnection: close\r\n\r\n${err.message}`),
      );
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return (server.address() as { port: number }).port;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://kubelet');
    const endpoint = ['healthz', 'pods', 'runningpods', 'containerLogs', 'stats', 'metrics'].find((e) => url.pathname.split('/')[1] === e) ?? 'other';
    res.once('finish', () => this.o.metrics?.kubeletRequests.inc({ endpoint, code: String(res.statusCode) }));
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
      return;
    }
    const a = await this.auth.check(req);
    if (!a.ok) {
      res.writeHead(a.code, { 'content-type': 'text/plain' });
      res.end(`${a.message}\n`);
      return;
    }
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    if (url.pathname === '/pods' || url.pathname === '/pods/') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: {}, items: this.o.pods() }));
      return;
    }
    if ((url.pathname === '/runningpods' || url.pathname === '/runningpods/') && req.method === 'GET') {
      let list;
      try {
        list = runningPods(await this.o.controller.list(`${LABEL_NODE}=${this.o.nodeName}`));
      } catch (err) {
        const se = err as ServiceError;
        res.writeHead(httpStatusOf(se.code).code, { 'content-type': 'text/plain' });
        res.end(`${se.details || se.message}\n`);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(list));
      return;
    }
    if (url.pathname === '/stats/summary' || url.pathname === '/metrics/resource') {
      if (!this.o.agents) {
        res.writeHead(501, { 'content-type': 'text/plain' });
        res.end('stats are not available: this virtual node was started without access to cell agents\n');
        return;
      }
      const usage = await collectStats(this.o.controller, this.o.agents, this.o.pods());
      if (url.pathname === '/stats/summary') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(summary(this.o.nodeName, this.started, usage)));
      } else {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        res.end(resourceMetrics(usage));
      }
      return;
    }
    if (parts[0] === 'containerLogs' && parts.length === 4 && req.method === 'GET') {
      await this.containerLogs(parts[1]!, parts[2]!, parts[3]!, url.searchParams, req, res);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end(
      `404 page not found: ${url.pathname} (this kubelet serves /healthz, /pods, /runningpods/, /stats/summary, /metrics/resource, /containerLogs/NS/POD/CONTAINER, /exec, /attach, /portForward)\n`,
    );
  }

  private async containerLogs(ns: string, pod: string, container: string, q: URLSearchParams, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const num = (name: string) => {
      const v = q.get(name);
      if (v === null || v === '') return undefined;
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw Object.assign(new Error(`${name}: expected a non-negative integer, got "${v}"`), { http: 400 });
      return n;
    };
    const bool = (name: string) => q.get(name) === 'true' || q.get(name) === '1';
    let options;
    let remaining = Infinity;
    try {
      const tail = num('tailLines');
      const sinceSeconds = num('sinceSeconds');
      const limitBytes = num('limitBytes');
      const sinceTime = q.get('sinceTime');
      if (sinceTime && Number.isNaN(Date.parse(sinceTime))) throw Object.assign(new Error(`sinceTime: expected RFC 3339, got "${sinceTime}"`), { http: 400 });
      options = {
        container,
        follow: bool('follow'),
        timestamps: bool('timestamps'),
        previous: bool('previous'),
        ...(tail !== undefined ? { tailLines: tail } : {}),
        ...(sinceSeconds !== undefined ? { sinceSeconds } : {}),
        ...(sinceTime ? { sinceTime: new Date(sinceTime) } : {}),
      };
      // The kubelet's limitBytes caps the output it writes (the first bytes of what tailLines
      // and since select, timestamps included); the agent's limit_bytes is a tail by bytes, so
      // it is not passed on but applied here.
      remaining = limitBytes ?? Infinity;
    } catch (err) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`${(err as Error).message}\n`);
      return;
    }
    const stream = this.o.controller.client.logs({ pod: { namespace: ns, name: pod }, options: LogsRequest.fromPartial(options) });
    let started = false;
    const start = () => {
      // grpc-js may emit 'end' after 'error': the error's status line was already written.
      if (started || res.headersSent) return;
      started = true;
      res.writeHead(200, { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' });
    };
    req.on('close', () => stream.cancel());
    await new Promise<void>((resolve) => {
      /** Writes what fits in limitBytes; false once the response must wait to drain. */
      const write = (b: Buffer | string): boolean => {
        if (remaining <= 0) return true;
        const buf = typeof b === 'string' ? Buffer.from(b) : b;
        const piece = buf.length > remaining ? buf.subarray(0, remaining) : buf;
        remaining -= piece.length;
        return res.write(piece);
      };
      stream.on('data', (chunk: LogChunk) => {
        start();
        let ok = true;
        for (const e of chunk.entries) {
          const prefix = options.timestamps ? `${rfc3339Nano(e)} ` : '';
          if (prefix) ok = write(prefix) && ok;
          ok = write(e.partial ? e.line : Buffer.concat([e.line, NL])) && ok;
        }
        if (!chunk.entries.length && chunk.text?.length) ok = write(chunk.text) && ok;
        if (remaining <= 0) {
          // The limit is reached: the response ends here, whatever else the logs hold.
          stream.cancel();
          return;
        }
        // A client reading slower than the log comes (logs -f of a chatty pod): stop reading
        // the call, so gRPC's flow control holds the rest back, until the response drains.
        if (!ok) {
          stream.pause();
          res.once('drain', () => stream.resume());
        }
      });
      stream.on('end', () => {
        start();
        if (!res.writableEnded) res.end();
        resolve();
      });
      stream.on('error', (err: ServiceError) => {
        if (err.code === GrpcStatus.CANCELLED) {
          res.end();
          return resolve();
        }
        if (!started && !res.headersSent) {
          res.writeHead(httpStatusOf(err.code).code, { 'content-type': 'text/plain' });
          res.end(`${err.details || err.message}\n`);
        } else res.end();
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
