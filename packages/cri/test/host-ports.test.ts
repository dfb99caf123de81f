// The host-port relays with real sockets on loopback: a TCP server and a UDP echo server stand in
// for the pod (the relay's target is an address and a port; crictl-pods.test.ts relays to a real
// cell). Listening, relaying both ways, the half-close, a port in use, an address not of this
// node, no relay before the pod's address is known, and nothing left listening after close.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CelloError } from '@cello/proto';
import { HostPorts } from '../src/pods/host-ports.js';

const logger = pino({ level: 'silent' });
const tcp = (hostPort: number, containerPort: number, hostIp = '127.0.0.1') => ({ protocol: 'TCP' as const, hostPort, containerPort, hostIp });

let ports: HostPorts;
let pod: Server;
let podPort: number;
let echo: UdpSocket;
let echoPort: number;

/** A free port on loopback (bound and released; the relay binds it right after). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Sends `text`, half-closes, and reads everything until the other side ends. */
async function exchange(port: number, text: string): Promise<string> {
  const c = connect(port, '127.0.0.1');
  await once(c, 'connect');
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  c.end(text);
  await Promise.race([once(c, 'close'), new Promise((_, reject) => setTimeout(() => reject(new Error('no answer within 10 s')), 10_000))]);
  return Buffer.concat(chunks).toString();
}

/** Resolves with the error a connection gets, or 'closed' if the other side closed it at once. */
async function refused(port: number): Promise<string> {
  const c: Socket = connect(port, '127.0.0.1');
  c.resume();
  return new Promise((resolve) => {
    c.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    c.on('close', () => resolve('closed'));
    setTimeout(() => resolve('still open after 10 s'), 10_000).unref();
  });
}

beforeEach(async () => {
  ports = new HostPorts(logger);
  // The "pod": answers what it read, upper-cased, once the client has half-closed.
  pod = createServer((s) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('end', () => s.end(Buffer.concat(got).toString().toUpperCase()));
  });
  await new Promise<void>((r) => pod.listen(0, '127.0.0.1', r));
  podPort = (pod.address() as AddressInfo).port;
  echo = createSocket('udp4');
  echo.on('message', (m, from) => echo.send(Buffer.from(`echo ${m.toString()}`), from.port, from.address));
  await new Promise<void>((r) => echo.bind(0, '127.0.0.1', r));
  echoPort = echo.address().port;
});

afterEach(async () => {
  await ports.closeAll();
  await new Promise((r) => pod.close(r));
  echo.close();
});

describe('host ports on this node, relayed to the pod', () => {
  it('relays TCP both ways (with the half-close), many connections, and stops listening on close', async () => {
    const hostPort = await freePort();
    await ports.open('sb1', [tcp(hostPort, podPort)], '127.0.0.1');
    expect(await exchange(hostPort, 'hello cell')).toBe('HELLO CELL');
    const many = await Promise.all([1, 2, 3, 4, 5].map((i) => exchange(hostPort, `n${i}`)));
    expect(many).toEqual(['N1', 'N2', 'N3', 'N4', 'N5']);
    await ports.close('sb1');
    expect(await refused(hostPort)).toBe('ECONNREFUSED');
    // Idempotent.
    await ports.close('sb1');
  });

  it('relays UDP per client, replies back to each', async () => {
    const hostPort = await freePort();
    await ports.open('sb1', [{ protocol: 'UDP', hostPort, containerPort: echoPort, hostIp: '127.0.0.1' }], '127.0.0.1');
    const clients = [createSocket('udp4'), createSocket('udp4')];
    try {
      const answers = await Promise.all(
        clients.map(async (c, i) => {
          const reply = once(c, 'message') as Promise<[Buffer]>;
          c.send(Buffer.from(`ping ${i}`), hostPort, '127.0.0.1');
          const [msg] = await Promise.race([reply, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no UDP reply within 10 s')), 10_000))]);
          return msg.toString();
        }),
      );
      expect(answers).toEqual(['echo ping 0', 'echo ping 1']);
    } finally {
      for (const c of clients) c.close();
    }
  });

  it('a connection before the pod has an address is closed, then relayed once it has one', async () => {
    const hostPort = await freePort();
    await ports.open('sb1', [tcp(hostPort, podPort)]);
    expect(await refused(hostPort)).toBe('closed');
    ports.setTarget('sb1', '127.0.0.1');
    expect(await exchange(hostPort, 'now')).toBe('NOW');
  });

  it("a connection before the relay knows the pod's address asks for it", async () => {
    const asked: string[] = [];
    const withAddress = new HostPorts(logger, (id) => (asked.push(id), Promise.resolve('127.0.0.1')));
    const hostPort = await freePort();
    await withAddress.open('sb2', [tcp(hostPort, podPort)]);
    try {
      expect(await exchange(hostPort, 'asked')).toBe('ASKED');
      expect(asked).toEqual(['sb2']);
    } finally {
      await withAddress.closeAll();
    }
  });

  it('a port in use fails naming the mapping, and leaves none of the sandbox listening', async () => {
    const first = await freePort();
    const taken = await freePort();
    await ports.open('other', [tcp(taken, podPort)], '127.0.0.1');
    const err = await ports.open('sb1', [tcp(first, podPort), tcp(taken, podPort)], '127.0.0.1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CelloError);
    expect((err as CelloError).code).toBe('FailedPrecondition');
    expect((err as Error).message).toBe(`config.port_mappings[1].host_port: 127.0.0.1:${taken}/TCP is already in use on this node`);
    expect(ports.has('sb1')).toBe(false);
    // The first mapping was bound, then released with the rest.
    expect(await refused(first)).toBe('ECONNREFUSED');
    // The other sandbox still relays.
    expect(await exchange(taken, 'still')).toBe('STILL');
  });

  it('an address that is not this node’s fails naming host_ip', async () => {
    const err = await ports.open('sb1', [tcp(await freePort(), podPort, '192.0.2.1')], '127.0.0.1').catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/^config\.port_mappings\[0\]\.host_ip: 192\.0\.2\.1:\d+\/TCP cannot be bound: 192\.0\.2\.1 is not an address of this node$/);
  });
});
