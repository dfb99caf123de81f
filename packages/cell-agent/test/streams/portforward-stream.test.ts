// The port-forward stream port (PortForwardTicket + the agent's stream listener): real sockets,
// a real network namespace with servers inside it, the real listener in plain and mTLS mode,
// and the real agent and `cell-agent ctl port-forward` process on top.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { status, type ServiceError } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CellAgentClient, PortForwardTicketResponse } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { startAgent } from '../../src/agent.js';
import { loadServerIdentity, type ServerIdentity } from '../../src/bootstrap/renewal.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { PortForwarder } from '../../src/portforward/index.js';
import { openStreamConnection, StreamRefusedError, type StreamClientTls } from '../../src/portforward/stream-client.js';
import { startPortForwardStreamListener, type PortForwardStreamListener } from '../../src/portforward/stream-listener.js';
import { TOKEN_BYTES } from '../../src/portforward/tickets.js';
import { agentPeerPolicy } from '../../src/server/peer-auth.js';
import type { RelayEnd } from '../../src/portforward/relay.js';
import { startTestAgent, type TestAgent } from '../helpers/agent.js';
import { makePki, type Pki } from '../helpers/certs.js';

const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
const netns = `cello-pfs-${process.pid}`;
const netnsPath = `/run/netns/${netns}`;
const ECHO = 9000; // echoes until the client half-closes, then half-closes too
const HELLO = 9001; // says hello and half-closes at once, then reads until the client ends
const NOTHING = 9002; // nothing listens
const log = pino({ level: process.env.TEST_LOG ?? 'silent' });

let pod: ChildProcess;
const forwarder = new PortForwarder();
const metrics = new AgentMetrics({ defaultMetrics: false });
let plain: PortForwardStreamListener;
let pki: Pki;

/** Rejects after `ms` with a message naming what did not happen. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Writes `payload` in pieces (backpressure respected), half-closes, and collects what comes back. */
function exchange(end: RelayEnd, payload: Buffer, opts: { slowReader?: boolean } = {}): Promise<{ hash: string; bytes: number; first: Buffer }> {
  const h = createHash('sha256');
  let bytes = 0;
  let first = Buffer.alloc(0);
  let nextPause = 2 << 20;
  const take = (c: Buffer) => {
    h.update(c);
    bytes += c.length;
    if (opts.slowReader && bytes >= nextPause) {
      // Stall now and then: every relay on the way backs up and queues its writes.
      nextPause += 2 << 20;
      end.socket.pause();
      setTimeout(() => end.socket.resume(), 15);
    }
    if (first.length < 64) first = Buffer.concat([first, c.subarray(0, 64)]);
    return false; // (hashed at once: the read buffer may be reused)
  };
  const done = new Promise<{ hash: string; bytes: number; first: Buffer }>((resolve, reject) => {
    end.socket.once('error', reject);
    end.socket.once('end', () => resolve({ hash: h.digest('hex'), bytes, first }));
  });
  for (const c of end.early ?? []) take(c);
  if (end.reads) end.reads.setSink(take);
  else end.socket.on('data', take);
  end.socket.resume();
  void (async () => {
    for (let off = 0; off < payload.length; off += 1 << 20) {
      if (!end.socket.write(payload.subarray(off, off + (1 << 20)))) await new Promise((r) => end.socket.once('drain', r));
    }
    end.socket.end();
  })();
  return done;
}

const closed = (s: Socket) => (s.closed ? Promise.resolve() : new Promise<void>((r) => s.once('close', () => r())));

async function open(l: PortForwardStreamListener, port: number, tls?: StreamClientTls): Promise<RelayEnd> {
  const t = l.issue(port);
  return openStreamConnection({ host: '127.0.0.1', port: l.port, token: t.token, ...(tls ? { tls } : {}) });
}

beforeAll(async () => {
  execFileSync('ip', ['netns', 'add', netns]);
  execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  const code = `const n=require('net');
    n.createServer({allowHalfOpen:true},c=>{c.on('error',()=>{});c.pipe(c)}).listen(${ECHO},'127.0.0.1');
    n.createServer({allowHalfOpen:true},c=>{c.on('error',()=>{});c.end('hello\\n');c.resume()}).listen(${HELLO},'127.0.0.1',()=>process.stdout.write('up\\n'));`;
  pod = spawn('nsenter', [`--net=${netnsPath}`, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await within(new Promise((r) => pod.stdout!.once('data', r)), 10_000, 'pod servers up');
  plain = await startPortForwardStreamListener({
    host: '127.0.0.1',
    port: 0,
    connect: (p) => forwarder.connect(netnsPath, p),
    logger: log,
    metrics,
    ticketTtlMs: 500,
    handshakeTimeoutMs: 500,
  });
  pki = makePki();
}, 60_000);

afterAll(async () => {
  await plain?.close();
  forwarder.close();
  pod?.kill('SIGKILL');
  try {
    execFileSync('ip', ['netns', 'del', netns]);
  } catch {
    /* already gone */
  }
});

describe('port-forward stream port (plain)', () => {
  it('carries a large transfer both ways intact, half-close included', async () => {
    const payload = randomBytes(48 << 20);
    const end = await open(plain, ECHO);
    const r = await within(exchange(end, payload), 60_000, 'echo of 48 MiB');
    expect(r.bytes).toBe(payload.length);
    expect(r.hash).toBe(sha(payload));
    await within(closed(end.socket), 5_000, 'connection closed after both half-closes');
  });

  it('keeps the bytes intact when the reader stalls (queued writes, reused read buffers)', async () => {
    const payload = randomBytes(24 << 20);
    const end = await open(plain, ECHO);
    const r = await within(exchange(end, payload, { slowReader: true }), 60_000, 'echo of 24 MiB to a stalling reader');
    expect(r.hash).toBe(sha(payload));
  });

  it('passes on a half-close from the pod while the client keeps sending', async () => {
    const end = await open(plain, HELLO);
    const r = await within(exchange(end, randomBytes(4 << 20)), 20_000, 'hello, then the upload');
    expect(r.first.toString()).toBe('hello\n');
    await within(closed(end.socket), 5_000, 'connection closed');
  });

  it('serves concurrent connections', async () => {
    const payloads = Array.from({ length: 6 }, () => randomBytes(6 << 20));
    const ends = await Promise.all(payloads.map(() => open(plain, ECHO)));
    const rs = await within(Promise.all(ends.map((e, i) => exchange(e, payloads[i]!))), 60_000, '6 concurrent echoes');
    rs.forEach((r, i) => expect(r.hash).toBe(sha(payloads[i]!)));
  });

  it('refuses a reused, an expired and a garbage token, and a port nothing listens on', async () => {
    const t = plain.issue(ECHO);
    const first = await openStreamConnection({ host: '127.0.0.1', port: plain.port, token: t.token });
    first.socket.destroy();
    await expect(openStreamConnection({ host: '127.0.0.1', port: plain.port, token: t.token })).rejects.toThrow(/already used/);
    const late = plain.issue(ECHO);
    await new Promise((r) => setTimeout(r, 700));
    await expect(openStreamConnection({ host: '127.0.0.1', port: plain.port, token: late.token })).rejects.toThrow(/expired/);
    await expect(openStreamConnection({ host: '127.0.0.1', port: plain.port, token: randomBytes(TOKEN_BYTES) })).rejects.toThrow(/unknown port-forward token/);
    const err = await open(plain, NOTHING).catch((e: Error) => e);
    expect(err).toBeInstanceOf(StreamRefusedError);
    expect((err as Error).message).toMatch(new RegExp(`cannot connect to port ${NOTHING} in the pod: .*ECONNREFUSED`));
  });

  it('answers a client that never sends its token with an error and closes', async () => {
    const s = tcpConnect({ host: '127.0.0.1', port: plain.port });
    s.write(randomBytes(TOKEN_BYTES - 1)); // almost a token
    let text = '';
    s.on('data', (d: Buffer) => (text += d.toString()));
    await within(closed(s), 5_000, 'refused connection closed');
    expect(text).toBe('error: no token within 0.5 s\n');
  });

  it('counts connections and bytes, and leaves nothing open', async () => {
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/cello_agent_port_forward_stream_connections_total\{result="ok"\} \d+/);
    expect(text).toMatch(/cello_agent_port_forward_stream_connections_total\{result="bad_token"\} 3/);
    expect(text).toMatch(/cello_agent_port_forward_stream_connections_total\{result="connect_failed"\} 1/);
    expect(text).toMatch(/cello_agent_port_forward_stream_connections_total\{result="timeout"\} 1/);
    const bytes = /cello_agent_stream_bytes_total\{kind="port_forward",direction="in"\} (\d+)/.exec(text);
    expect(Number(bytes?.[1])).toBeGreaterThanOrEqual((48 + 24 + 4 + 36) << 20);
    await waitFor('no open port-forward sessions', async () => /cello_agent_stream_sessions\{kind="port_forward"\} 0/.test(await metrics.registry.metrics()), {
      timeoutMs: 10_000,
    });
    await waitFor('no open stream connections', async () => plain.connectionCount() === 0, { timeoutMs: 10_000 });
  });
});

async function tlsRefusals(): Promise<number> {
  return Number(/cello_agent_port_forward_stream_connections_total\{result="tls_refused"\} (\d+)/.exec(await metrics.registry.metrics())?.[1] ?? 0);
}

describe('port-forward stream port (mTLS)', () => {
  let secure: PortForwardStreamListener;
  let tls: StreamClientTls;
  let identity: ServerIdentity;
  beforeAll(async () => {
    identity = await loadServerIdentity({ cert: pki.serverCert, key: pki.serverKey, ca: pki.ca });
    secure = await startPortForwardStreamListener({
      host: '127.0.0.1',
      port: 0,
      identity,
      peers: agentPeerPolicy(readFileSync(pki.serverCert, 'utf8')),
      connect: (p) => forwarder.connect(netnsPath, p),
      logger: log,
      metrics,
      handshakeTimeoutMs: 2_000,
    });
    tls = { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) };
  });
  afterAll(async () => {
    await secure?.close();
  });

  it('carries data for a client with a certificate from the CA', async () => {
    const payload = randomBytes(16 << 20);
    const end = await open(secure, ECHO, tls);
    const r = await within(exchange(end, payload), 60_000, 'echo over TLS');
    expect(r.hash).toBe(sha(payload));
    await within(closed(end.socket), 5_000, 'TLS connection closed after both half-closes');
  });

  it('refuses a client without a certificate, or with one from another CA', async () => {
    const refusedBefore = await tlsRefusals();
    const noCert = await openStreamConnection({ host: '127.0.0.1', port: secure.port, token: secure.issue(ECHO).token, tls: { ca: tls.ca } }).catch((e: Error) => e);
    expect(noCert).toBeInstanceOf(Error);
    expect((noCert as Error).message).toMatch(/certificate required/);
    const rogue = await open(secure, ECHO, { ca: tls.ca, cert: readFileSync(pki.rogueCert), key: readFileSync(pki.rogueKey) }).catch((e: Error) => e);
    expect(rogue).toBeInstanceOf(Error);
    expect((rogue as Error).message).toMatch(/closed the stream connection without an answer \(TLS: is the client certificate from the agent's CA\?\)|unknown ca/);
    expect(await tlsRefusals()).toBe(refusedBefore + 2);
    // And a plain TCP client gets nothing but a closed connection.
    const s = tcpConnect({ host: '127.0.0.1', port: secure.port });
    s.on('error', () => {});
    s.write(randomBytes(TOKEN_BYTES));
    await within(closed(s), 5_000, 'plain client cut off');
    await waitFor('no connections left open', async () => secure.connectionCount() === 0, { timeoutMs: 5_000 });
  });

  it("refuses a certificate of the same CA that is not the controller's, with a valid ticket, naming both identities", async () => {
    const forbidden = async () => Number(/cello_agent_port_forward_stream_connections_total\{result="forbidden"\} (\d+)/.exec(await metrics.registry.metrics())?.[1] ?? 0);
    const before = await forbidden();
    for (const [what, id] of Object.entries(pki.impostors)) {
      // A good ticket (as if stolen from the controller) is not enough: the peer is checked first.
      const err = await open(secure, ECHO, { ca: tls.ca, cert: readFileSync(id.cert), key: readFileSync(id.key) }).catch((e: Error) => e);
      expect(err, what).toBeInstanceOf(StreamRefusedError);
      const msg = (err as Error).message;
      expect(msg, what).toContain('this agent serves only spiffe://cello/client/controller');
      if (what === 'twoIdentities') expect(msg).toMatch(/a certificate with 2 URI SANs/);
      else expect(msg, what).toContain(`the client certificate names ${id.uri}`);
    }
    expect(await forbidden()).toBe(before + Object.keys(pki.impostors).length);
    await waitFor('no connections left open', async () => secure.connectionCount() === 0, { timeoutMs: 10_000 });
  });

  it('serves a renewed certificate on the next handshake, as the gRPC port does', async () => {
    const peerCn = async () => {
      const c = tlsConnect({ host: '127.0.0.1', port: secure.port, ca: tls.ca, cert: tls.cert, key: tls.key });
      await within(new Promise((r) => c.once('secureConnect', r)), 5_000, 'TLS handshake');
      const cn = c.getPeerCertificate().subject.CN;
      c.destroy();
      return cn;
    };
    expect(await peerCn()).toBe('server');
    const ossl = (args: string[]) => execFileSync('openssl', args, { cwd: pki.dir, stdio: 'pipe' });
    ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'renewed.key', '-out', 'renewed.csr', '-subj', '/CN=renewed']);
    writeFileSync(join(pki.dir, 'renewed.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    ossl(['x509', '-req', '-in', 'renewed.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'renewed.pem', '-days', '1', '-extfile', 'renewed.ext']);
    identity.update({ certPem: readFileSync(join(pki.dir, 'renewed.pem'), 'utf8'), keyPem: readFileSync(join(pki.dir, 'renewed.key'), 'utf8') });
    expect(await peerCn()).toBe('renewed');
  });

  it('checks the agent certificate against the name the client expects', async () => {
    const err = await open(secure, ECHO, { ...tls, serverName: 'other.example' }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/other\.example/);
    // (direct TLS client: the raw socket API works the same with the right name)
    const ok = tlsConnect({ host: '127.0.0.1', port: secure.port, ca: tls.ca, cert: tls.cert, key: tls.key });
    await within(new Promise((r) => ok.once('secureConnect', r)), 5_000, 'TLS handshake');
    ok.destroy();
  });
});

// ---- the real agent and the real ctl process ----

function ctlForward(args: string[]): { proc: ChildProcess; localPort: Promise<number>; out: () => string; err: () => string } {
  const proc = spawn(process.execPath, [cli, 'ctl', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const localPort = within(
    new Promise<number>((resolve, reject) => {
      proc.stdout!.on('data', (d) => {
        out += d;
        const m = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      proc.once('exit', (code) => reject(new Error(`ctl exited ${code}: ${err}`)));
    }),
    20_000,
    'ctl port-forward listening',
  );
  return { proc, localPort, out: () => out, err: () => err };
}

async function echoThroughLocal(port: number, payload: Buffer) {
  const s = tcpConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await within(new Promise((r) => s.once('connect', r)), 5_000, 'local connect');
  return within(exchange({ socket: s }, payload), 60_000, 'echo through ctl');
}

async function stopCtl(c: ReturnType<typeof ctlForward>) {
  c.proc.kill('SIGINT');
  await within(new Promise((r) => (c.proc.exitCode !== null ? r(undefined) : c.proc.once('exit', r))), 10_000, 'ctl exit');
}

describe('cell-agent ctl port-forward against the real agent', () => {
  let a: TestAgent;
  let noStream: TestAgent;
  beforeAll(async () => {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: build first (npx turbo run build --filter=@cello/cell-agent...)`);
    a = await startTestAgent(undefined, { podNetns: netnsPath, podIP: '10.99.1.2' });
    noStream = await startTestAgent(undefined, { podNetns: netnsPath, podIP: '10.99.1.3', streamListen: false });
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
    await noStream?.stop();
  });

  it('the ticket RPC checks the port like PortForward does, and is UNIMPLEMENTED without a stream port', async () => {
    const ticket = (c: CellAgentClient, port: number) =>
      new Promise<PortForwardTicketResponse | ServiceError>((resolve) => c.portForwardTicket({ port }, (e, r) => resolve(e ?? r!)));
    const bad = (await ticket(a.client, 70_000)) as ServiceError;
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.details).toBe('port 70000 is not a TCP port (1-65535)');
    const t = (await ticket(a.client, ECHO)) as PortForwardTicketResponse;
    expect(t.token.length).toBe(TOKEN_BYTES);
    expect(t.streamPort).toBe(a.agent.streamPort);
    expect(t.expires?.getTime()).toBeGreaterThan(Date.now());
    expect(((await ticket(noStream.client, ECHO)) as ServiceError).code).toBe(status.UNIMPLEMENTED);
  });

  it('ctl uses the stream port when the agent has one', async () => {
    const c = ctlForward(['--addr', a.agent.address, '--insecure-dev', 'port-forward', `:${ECHO}`]);
    try {
      const payload = randomBytes(24 << 20);
      const r = await echoThroughLocal(await c.localPort, payload);
      expect(r.hash).toBe(sha(payload));
      await waitFor('ctl announced the path', async () => c.out().includes(`Handling connection for ${ECHO} (stream port)`), { timeoutMs: 5_000 });
    } finally {
      await stopCtl(c);
    }
  });

  it("ctl prints the agent's error for a port nothing listens on", async () => {
    const c = ctlForward(['--addr', a.agent.address, '--insecure-dev', 'port-forward', `:${NOTHING}`]);
    try {
      const s = tcpConnect({ host: '127.0.0.1', port: await c.localPort });
      s.on('error', () => {});
      await within(closed(s), 10_000, 'local connection closed');
      await waitFor('ctl printed the error', async () => c.err().includes(`port-forward ${NOTHING}: cannot connect to port ${NOTHING} in the pod`), { timeoutMs: 5_000 });
    } finally {
      await stopCtl(c);
    }
  });

  it('ctl falls back to the PortForward gRPC stream against an agent without a stream port', async () => {
    const c = ctlForward(['--addr', noStream.agent.address, '--insecure-dev', 'port-forward', `:${ECHO}`]);
    try {
      const port = await c.localPort;
      for (let i = 0; i < 2; i++) {
        const payload = randomBytes(4 << 20);
        expect((await echoThroughLocal(port, payload)).hash).toBe(sha(payload));
      }
      await waitFor('ctl announced the path', async () => c.out().split(`Handling connection for ${ECHO} (gRPC stream)`).length === 3, { timeoutMs: 5_000 });
      expect(c.out()).not.toContain('(stream port)');
    } finally {
      await stopCtl(c);
    }
  });

  it('ctl with mTLS reaches the stream port with its client certificate', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-agent-'));
    const agent = await startAgent({
      listen: '127.0.0.1:0',
      stateDir,
      tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca },
      logger: log,
      podNetns: netnsPath,
      podIP: '10.99.1.4',
      cgroupParent: `/cello-test/pfs-${process.pid}`,
    });
    const c = ctlForward(['--addr', agent.address, '--tls-cert', pki.clientCert, '--tls-key', pki.clientKey, '--tls-ca', pki.ca, 'port-forward', `:${ECHO}`]);
    try {
      const payload = randomBytes(8 << 20);
      expect((await echoThroughLocal(await c.localPort, payload)).hash).toBe(sha(payload));
      await waitFor('ctl announced the path', async () => c.out().includes(`Handling connection for ${ECHO} (stream port)`), { timeoutMs: 5_000 });
    } finally {
      await stopCtl(c);
      await agent.close();
      rmSync(agent.runDir, { recursive: true, force: true });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
