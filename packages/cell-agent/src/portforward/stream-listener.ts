// The agent's port-forward stream port (the data path behind PortForwardTicket), after the
// kubelet's CRI streaming server: the gRPC API authorises and hands out a single-use token, and
// the bytes then flow over a connection of their own instead of gRPC frames (grpc-js tops out
// well below what TCP relays do here; see relay.ts).
//
// Per connection:  client -> TOKEN_BYTES token (within handshakeTimeoutMs)
//                  agent  -> "ok\n", or "error: <reason>\n" and close
//                  then bytes both ways, half-closes passed on, until both sides have ended.
// The agent connects to the pod port before it answers, so "nothing listens there" is an error
// line, not a connection that opens and drops.
//
// Security is the gRPC server's: with an identity (mTLS) the listener is TLS with the same
// certificate, follows its renewals, requires a client certificate from the same CA, and then
// the same peer as every gRPC call (peer-auth.ts: the controller), checked after the handshake
// and before a byte of the token is read; without one (--insecure-dev) it is plain TCP.
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import type { ServerIdentity } from '../bootstrap/renewal.js';
import type { PeerPolicy } from '../server/peer-auth.js';
import type { AgentMetrics } from '../metrics/index.js';
import { endWithStaticReads, relay, type RelayEnd, type StaticReads } from './relay.js';
import { TicketBook, TOKEN_BYTES, type Ticket } from './tickets.js';

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
// A refused client gets its error line; if it never closes, it is cut off after this.
const LINGER_MS = 5_000;

export interface StreamListenerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** mTLS with the agent's identity; undefined: plain TCP (--insecure-dev). */
  identity?: ServerIdentity;
  /** With `identity`: who may connect (the gRPC server's policy). Required with `identity`. */
  peers?: PeerPolicy;
  /** A socket to `port` in the pod (PortForwarder.connect), handed over paused. */
  connect(port: number): Promise<Socket>;
  logger: Logger;
  metrics?: AgentMetrics;
  ticketTtlMs?: number;
  /** How long a client has to complete TLS and send its token. */
  handshakeTimeoutMs?: number;
}

export interface PortForwardStreamListener {
  port: number;
  /** A single-use ticket for one connection to `port` (throws TicketLimitError when too many are outstanding). */
  issue(port: number): Ticket;
  /** Connections open now (handshaking or relaying). */
  connectionCount(): number;
  /** Stops listening and cuts every connection. */
  close(): Promise<void>;
}

export async function startPortForwardStreamListener(o: StreamListenerOptions): Promise<PortForwardStreamListener> {
  const log = o.logger.child({ component: 'port-forward-stream' });
  const tickets = new TicketBook(o.ticketTtlMs === undefined ? {} : { ttlMs: o.ticketTtlMs });
  const handshakeMs = o.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const live = new Set<Socket>();

  const refuse = (sock: Socket, reads: StaticReads | undefined, result: 'bad_token' | 'timeout' | 'connect_failed' | 'forbidden', reason: string) => {
    o.metrics?.portForwardStreamConnection(result);
    log.info({ peer: sock.remoteAddress, reason }, 'port-forward stream connection refused');
    if (sock.writable) sock.end(`error: ${reason}\n`);
    // Read on (discarding) so the client's close is seen and the socket goes at once.
    reads?.setSink(() => false);
    sock.resume();
    setTimeout(() => sock.destroy(), LINGER_MS).unref();
  };

  const admit = async (sock: Socket, reads: StaticReads | undefined, token: Buffer, early: Buffer) => {
    const r = tickets.redeem(token);
    if (!r.ok) return refuse(sock, reads, 'bad_token', r.reason);
    let pod: Socket;
    try {
      pod = await o.connect(r.port);
    } catch (err) {
      return refuse(sock, reads, 'connect_failed', `cannot connect to port ${r.port} in the pod: ${(err as Error).message}`);
    }
    if (sock.closed || sock.destroyed) {
      pod.destroy();
      return;
    }
    o.metrics?.portForwardStreamConnection('ok');
    const closeSession = o.metrics?.openSession('port_forward');
    sock.setNoDelay(true);
    pod.setNoDelay(true);
    sock.write('ok\n');
    log.debug({ peer: sock.remoteAddress, port: r.port }, 'port-forward stream connection open');
    // The pod socket carries the bulk of a download: read it into a static buffer (measured:
    // agent CPU per MB 0.5 ms this way, 1.5 ms with 'data' events). It came over IPC, so it is
    // re-wrapped for that, here, in the turn it arrived; where that is not possible, 'data'
    // events still work.
    const podEnd = endWithStaticReads(pod);
    const clientEnd: RelayEnd = { socket: sock, ...(reads ? { reads } : {}), early: early.length > 0 ? [early] : [] };
    const done = await relay(clientEnd, podEnd, (dir, n) => o.metrics?.streamed('port_forward', dir === 'aToB' ? 'in' : 'out', n));
    closeSession?.();
    log.debug({ port: r.port, in: done.aToB, out: done.bToA, error: done.error?.message }, 'port-forward stream connection closed');
  };

  /** Reads the token (with a deadline), then admits. `reads`: the socket reads into a static buffer. */
  const handle = (sock: Socket, reads: StaticReads | undefined) => {
    // Until the relay takes over, a reset or a broken handshake just ends this connection.
    sock.on('error', () => sock.destroy());
    const chunks: Buffer[] = [];
    let got = 0;
    const stopReadingToken = () => {
      clearTimeout(timer);
      if (reads) reads.setSink(undefined);
      else sock.off('data', take);
      sock.off('end', onEarlyEnd);
    };
    const timer = setTimeout(() => {
      stopReadingToken();
      refuse(sock, reads, 'timeout', `no token within ${handshakeMs / 1000} s`);
    }, handshakeMs);
    const take = (d: Buffer) => {
      chunks.push(reads ? Buffer.from(d) : d); // (a static buffer's view is reused by the next read)
      got += d.length;
      if (got < TOKEN_BYTES) return false;
      stopReadingToken();
      sock.pause();
      const all = Buffer.concat(chunks, got);
      admit(sock, reads, all.subarray(0, TOKEN_BYTES), all.subarray(TOKEN_BYTES)).catch((err: unknown) => {
        log.error({ err }, 'port-forward stream connection failed');
        sock.destroy();
      });
      return false;
    };
    const onEarlyEnd = () => {
      stopReadingToken();
      refuse(sock, reads, 'bad_token', 'the connection ended before the whole token was sent');
    };
    if (reads) reads.setSink(take);
    else sock.on('data', take);
    sock.on('end', onEarlyEnd);
    sock.resume();
  };

  // Every TCP connection, TLS ones still handshaking included, so close() can cut them all.
  const track = (s: Socket) => {
    live.add(s);
    s.once('close', () => live.delete(s));
  };
  let server: Server | TlsServer;
  let stopFollowing = () => {};
  if (o.identity) {
    const identity = o.identity;
    const peers = o.peers;
    if (!peers) throw new Error('port-forward stream listener: a TLS identity needs a peer policy (who may connect)');
    const context = () => {
      const p = identity.current();
      return { cert: p.certPem, key: p.keyPem, ca: p.caPem };
    };
    const tlsServer = createTlsServer({ ...context(), requestCert: true, rejectUnauthorized: true, allowHalfOpen: true, handshakeTimeout: handshakeMs }, (s) => {
      // The chain was verified in the handshake; whose certificate it is is checked here.
      const d = peers.check(s.getPeerCertificate());
      if (!d.ok) {
        s.on('error', () => s.destroy());
        return refuse(s, undefined, 'forbidden', d.reason);
      }
      handle(s, undefined);
    });
    tlsServer.on('connection', track);
    tlsServer.on('tlsClientError', (err, sock) => {
      o.metrics?.portForwardStreamConnection('tls_refused');
      log.info({ peer: sock.remoteAddress, err: err.message }, 'port-forward stream TLS handshake refused');
    });
    // A renewed certificate applies to the next handshake, as on the gRPC port.
    const follow = () => tlsServer.setSecureContext(context());
    identity.addIdentityCertificateListener(follow);
    identity.addCaCertificateListener(follow);
    stopFollowing = () => {
      identity.removeIdentityCertificateListener(follow);
      identity.removeCaCertificateListener(follow);
    };
    server = tlsServer;
  } else {
    // Accepted unread (pauseOnConnect), so each can be re-wrapped to read into a static buffer
    // (uploads then cost what downloads do).
    server = createTcpServer({ allowHalfOpen: true, pauseOnConnect: true }, (raw) => {
      const end = endWithStaticReads(raw);
      track(end.socket);
      handle(end.socket, end.reads);
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'port-forward stream listener failed'));
  const port = (server.address() as AddressInfo).port;
  log.info({ host: o.host, port, tls: o.identity !== undefined }, 'port-forward stream listener up');
  return {
    port,
    issue: (p) => tickets.issue(p),
    connectionCount: () => live.size,
    close: async () => {
      stopFollowing();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of live) s.destroy();
      await closed;
    },
  };
}
