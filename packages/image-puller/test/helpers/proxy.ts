import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Fault {
  /** Which requests (path) this fault applies to. */
  match: RegExp;
  /** How many matching requests it hits (default: all). */
  times?: number;
  /** Answer with this status instead of forwarding. */
  status?: number;
  /** Forward, but cut the connection after this many body bytes. */
  dropAfter?: number;
  /** Forward, flipping the byte at this body offset. */
  corruptAt?: number;
  /** Forward only once this settles (a transfer held in flight for as long as a test needs). */
  hold?: Promise<void>;
}

export interface SeenRequest {
  method: string;
  path: string;
  range: string | undefined;
  status: number;
}

/**
 * A reverse proxy in front of a registry (both on loopback) that injects faults: error statuses,
 * connections dropped mid-body, corrupted bytes. Records every request it saw.
 */
export class FaultProxy {
  readonly seen: SeenRequest[] = [];
  private faults: { f: Fault; left: number }[] = [];
  private server: Server | undefined;
  host = '';

  constructor(private readonly upstream: { host: string; port: number }) {}

  inject(...faults: Fault[]): void {
    this.faults = faults.map((f) => ({ f, left: f.times ?? Infinity }));
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = req.url ?? '/';
    const hit = this.faults.find((x) => x.left > 0 && x.f.match.test(path));
    if (hit) hit.left--;
    const f = hit?.f;
    const rec: SeenRequest = { method: req.method ?? 'GET', path, range: req.headers.range, status: 0 };
    this.seen.push(rec);
    if (f?.status) {
      rec.status = f.status;
      res.writeHead(f.status, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}');
      return;
    }
    if (f?.hold) {
      const held = f.hold;
      void held.then(() => this.forward(req, res, path, rec, { ...f, hold: undefined }));
      return;
    }
    this.forward(req, res, path, rec, f);
  }

  private forward(req: IncomingMessage, res: ServerResponse, path: string, rec: SeenRequest, f: Fault | undefined): void {
    const headers = { ...req.headers, host: `127.0.0.1:${this.upstream.port}` };
    const up = request({ host: '127.0.0.1', port: this.upstream.port, method: req.method, path, headers }, (ur) => {
      rec.status = ur.statusCode ?? 0;
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      let offset = 0;
      ur.on('data', (chunk: Buffer) => {
        let c = chunk;
        if (f?.corruptAt !== undefined && f.corruptAt >= offset && f.corruptAt < offset + c.length) {
          c = Buffer.from(c);
          c[f.corruptAt - offset] = c[f.corruptAt - offset]! ^ 0xff;
        }
        if (f?.dropAfter !== undefined && offset + c.length > f.dropAfter) {
          res.write(c.subarray(0, Math.max(0, f.dropAfter - offset)));
          ur.destroy();
          res.socket?.destroy();
          return;
        }
        offset += c.length;
        res.write(c);
      });
      ur.on('end', () => res.end());
    });
    up.on('error', () => res.socket?.destroy());
    req.pipe(up);
  }
}
