// TEST DOUBLE of the cloud metadata services, serving a cell's user data on loopback the way
// AWS IMDSv2 (session token first, then GETs carrying it) and the GCE metadata server
// (Metadata-Flavor: Google) do. It records every request so tests can check the protocol.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';

export interface MetadataDouble {
  url: string;
  requests: { method: string; path: string; token?: string; flavor?: string }[];
  close(): Promise<void>;
}

export async function startMetadataDouble(o: { cloud: 'aws' | 'gce'; userData?: string; instanceId: string }): Promise<MetadataDouble> {
  const tokens = new Set<string>();
  const requests: MetadataDouble['requests'] = [];
  const header = (req: IncomingMessage, name: string) => {
    const v = req.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  const server: Server = createServer((req, res) => {
    const path = req.url ?? '/';
    const token = header(req, 'x-aws-ec2-metadata-token');
    const flavor = header(req, 'metadata-flavor');
    requests.push({ method: req.method ?? '', path, ...(token ? { token } : {}), ...(flavor ? { flavor } : {}) });
    const send = (status: number, body = '') => {
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
    };
    if (o.cloud === 'aws') {
      if (path === '/latest/api/token') {
        if (req.method !== 'PUT' || !header(req, 'x-aws-ec2-metadata-token-ttl-seconds')) return send(400);
        const t = randomBytes(16).toString('base64url');
        tokens.add(t);
        return send(200, t);
      }
      if (!token || !tokens.has(token)) return send(401);
      if (path === '/latest/user-data') return o.userData === undefined ? send(404) : send(200, o.userData);
      if (path === '/latest/meta-data/instance-id') return send(200, o.instanceId);
      return send(404);
    }
    if (flavor !== 'Google') return send(403);
    if (path === '/computeMetadata/v1/instance/attributes/user-data') return o.userData === undefined ? send(404) : send(200, o.userData);
    if (path === '/computeMetadata/v1/instance/id') return send(200, o.instanceId);
    return send(404);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('metadata double: no address');
  return {
    url: `http://127.0.0.1:${addr.port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
