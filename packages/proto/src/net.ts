// Network addresses as every package writes them: HOST:PORT, with an IPv6 host in brackets
// ([::1]:10250), the form gRPC, Node's listen options and Kubernetes use. Splitting by hand at
// the last ':' kept the brackets at some sites and not others.
import { createServer } from 'node:net';
import { CelloError } from './errors.js';

export class HostPortError extends CelloError {
  constructor(message: string) {
    super('InvalidArgument', message);
  }
}

/** `host:port` or `[v6]:port` → the bare host (no brackets) and the port. */
export function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  if (i < 0) throw new HostPortError(`${JSON.stringify(address)}: expected HOST:PORT`);
  let host = address.slice(0, i);
  const portText = address.slice(i + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  else if (host.includes(':')) throw new HostPortError(`${JSON.stringify(address)}: an IPv6 host must be in brackets ([::1]:PORT)`);
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw new HostPortError(`${JSON.stringify(address)}: the port must be a number from 0 to 65535`);
  return { host, port: Number(portText) };
}

/** The address for `host` and `port`, bracketing an IPv6 host (already bracketed is kept). */
export function joinHostPort(host: string, port: number | string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') return reject(new Error('no port'));
      srv.close(() => resolve(addr.port));
    });
  });
}
