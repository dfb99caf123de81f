// The streaming server's URLs are credentials: single use, short-lived, unguessable. The token
// cache with a clock the test moves, and the real StreamServer over HTTP refusing an unknown, a
// reused, an expired and a misrouted token (none of which reaches the controller: the one it is
// given here does not exist).
import { request } from 'node:http';
import { credentials } from '@grpc/grpc-js';
import { pino } from 'pino';
import { ControllerApiClient } from '@cello/controller/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_IN_FLIGHT, TokenCache } from '../src/streaming/tokens.js';
import { StreamServer, parseListen } from '../src/streaming/stream-server.js';

describe('TokenCache', () => {
  it('hands out unguessable tokens, each good for one use', () => {
    const c = new TokenCache<string>();
    const a = c.insert('a');
    const b = c.insert('b');
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(c.consume(b)).toBe('b');
    expect(c.consume(b)).toBeUndefined();
    expect(c.consume('no-such-token')).toBeUndefined();
    expect(c.consume(a)).toBe('a');
    expect(c.size).toBe(0);
  });

  it('expires tokens after the TTL, and refuses new ones beyond the in-flight limit until old ones go', () => {
    let now = 1_000;
    const c = new TokenCache<number>(60_000, 2, () => now);
    const first = c.insert(1);
    now += 59_999;
    expect(c.consume(first)).toBe(1);
    const second = c.insert(2);
    c.insert(3);
    expect(() => c.insert(4)).toThrow(/maximum number of in-flight streaming requests \(2\)/);
    now += 60_000;
    expect(c.consume(second)).toBeUndefined(); // expired
    expect(c.insert(5)).toMatch(/^[A-Za-z0-9_-]+$/); // the expired ones no longer count
    expect(MAX_IN_FLIGHT).toBe(1000);
  });
});

describe('StreamServer', () => {
  let server: StreamServer;
  let controller: ControllerApiClient;
  const target = { ns: 'default', pod: 'p', container: 'c' };
  const exec = () => server.url({ kind: 'exec', target, command: ['true'], tty: false, stdin: false, stdout: true, stderr: true, user: 'test' });

  beforeAll(async () => {
    // Nothing listens there: the streams that do get through fail, which is not what is tested.
    controller = new ControllerApiClient('127.0.0.1:1', credentials.createInsecure());
    server = new StreamServer({ controller, listen: '127.0.0.1:0', logger: pino({ level: 'silent' }), tokenTtlMs: 500 });
    await server.listen();
  });
  afterAll(async () => {
    await server?.close();
    controller?.close();
  });

  /** An upgrade to SPDY as remotecommand clients send it: 101 or the refusal's status. */
  const upgrade = (url: string) =>
    new Promise<number>((resolve, reject) => {
      const req = request(url, {
        method: 'POST',
        headers: { connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'v4.channel.k8s.io' },
        timeout: 10_000,
      });
      req.on('upgrade', (res, socket) => {
        socket.destroy();
        resolve(res.statusCode ?? 0);
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('timeout', () => req.destroy(new Error('no answer in 10s')));
      req.on('error', reject);
      req.end();
    });

  it('serves a token once: the second use is not found', async () => {
    const url = exec();
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{43}$/);
    expect(await upgrade(url)).toBe(101);
    expect(await upgrade(url)).toBe(404);
  });

  it('refuses an unknown token, an expired one, and one used on another endpoint', async () => {
    const base = exec().replace(/\/exec\/.*$/, '');
    expect(await upgrade(`${base}/exec/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`)).toBe(404);
    expect(await upgrade(`${base}/exec/`)).toBe(404);
    expect(await upgrade(`${base}/somewhere/else`)).toBe(404);
    const old = exec();
    await new Promise((r) => setTimeout(r, 700));
    expect(await upgrade(old)).toBe(404);
    // An exec token on the port-forward endpoint: refused, and spent.
    const misrouted = exec();
    expect(await upgrade(misrouted.replace('/exec/', '/portforward/'))).toBe(404);
    expect(await upgrade(misrouted)).toBe(404);
    expect(server.stats().pendingTokens).toBe(0);
  });

  it('answers a request that does not upgrade with 400, and a bad listen address with the flag', async () => {
    const url = exec();
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(url, { method: 'GET' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(400);
    expect(() => parseListen('localhost')).toThrow(/--streaming-listen "localhost": expected HOST:PORT/);
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
  });
});
