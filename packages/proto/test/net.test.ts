import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, HostPortError, joinHostPort, splitHostPort } from '../src/net.js';

describe('host:port', () => {
  it('splits IPv4 and names', () => {
    expect(splitHostPort('0.0.0.0:10250')).toEqual({ host: '0.0.0.0', port: 10250 });
    expect(splitHostPort('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(splitHostPort('cell-1.example:443')).toEqual({ host: 'cell-1.example', port: 443 });
  });

  it('splits IPv6 in brackets and returns the bare host', () => {
    expect(splitHostPort('[::1]:7443')).toEqual({ host: '::1', port: 7443 });
    expect(splitHostPort('[::]:9090')).toEqual({ host: '::', port: 9090 });
    expect(splitHostPort('[fd00:ec2::254]:80')).toEqual({ host: 'fd00:ec2::254', port: 80 });
  });

  it('refuses what is not HOST:PORT', () => {
    for (const bad of ['localhost', '::1:80', 'fd00::1', 'host:http', 'host:65536', 'host:', '[::1]']) {
      expect(() => splitHostPort(bad), bad).toThrow(HostPortError);
    }
  });

  it('joins, bracketing IPv6, and round-trips', () => {
    expect(joinHostPort('127.0.0.1', 80)).toBe('127.0.0.1:80');
    expect(joinHostPort('::1', 0)).toBe('[::1]:0');
    expect(joinHostPort('[::1]', '7443')).toBe('[::1]:7443');
    for (const a of ['10.0.0.1:1', '[::1]:2', '[fd00:ec2::254]:3', 'name:4']) {
      const { host, port } = splitHostPort(a);
      expect(joinHostPort(host, port)).toBe(a);
    }
  });
});

describe('freePort', () => {
  it('returns a port that can be listened on at once', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    const srv = createServer();
    await new Promise<void>((res, rej) => srv.once('error', rej).listen(port, '127.0.0.1', () => res()));
    await new Promise((r) => srv.close(r));
  });
});
