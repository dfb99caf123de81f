import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { freePort } from './net.js';

/**
 * IMDS TEST DOUBLE — a small stand-in for the EC2 instance metadata service (IMDSv2 only),
 * on 127.0.0.1. AWS's amazon-ec2-metadata-mock is not available from the Go module proxy here,
 * so tests use this double, which follows the documented protocol: PUT /latest/api/token with
 * X-aws-ec2-metadata-token-ttl-seconds returns a session token; every GET must carry it in
 * X-aws-ec2-metadata-token (401 otherwise, as with HttpTokens=required); unknown paths are 404.
 * Tests set what the paths answer: user data, spot/instance-action, rebalance, ...
 */
export interface ImdsTestDouble {
  /** http://127.0.0.1:PORT — the agent's metadata URL in tests. */
  url: string;
  /** Sets (or with undefined, removes) the body served at a path such as /latest/user-data. */
  set(path: string, body: string | undefined): void;
  /** GETs refused for lack of a valid session token (IMDSv1-style requests). */
  readonly unauthorized: number;
  /** Session tokens handed out. */
  readonly tokensIssued: number;
  /** Paths of the authorized GETs, in order. */
  readonly gets: readonly string[];
  stop(): Promise<void>;
}

export async function startImdsTestDouble(initial: Record<string, string> = {}): Promise<ImdsTestDouble> {
  const paths = new Map(Object.entries(initial));
  const tokens = new Map<string, number>(); // token -> expiry (ms)
  let unauthorized = 0;
  let tokensIssued = 0;
  const gets: string[] = [];
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method === 'PUT' && path === '/latest/api/token') {
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) {
        res.writeHead(400).end('missing or invalid X-aws-ec2-metadata-token-ttl-seconds');
        return;
      }
      const t = randomBytes(24).toString('base64url');
      tokens.set(t, Date.now() + ttl * 1000);
      tokensIssued++;
      res.writeHead(200, { 'content-type': 'text/plain', 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) }).end(t);
      return;
    }
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    const t = req.headers['x-aws-ec2-metadata-token'];
    const exp = typeof t === 'string' ? tokens.get(t) : undefined;
    if (exp === undefined || exp < Date.now()) {
      unauthorized++;
      res.writeHead(401).end();
      return;
    }
    gets.push(path);
    const body = paths.get(path);
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end(body);
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    url: `http://127.0.0.1:${port}`,
    set(path, body) {
      if (body === undefined) paths.delete(path);
      else paths.set(path, body);
    },
    get unauthorized() {
      return unauthorized;
    },
    get tokensIssued() {
      return tokensIssued;
    },
    gets,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
