// The shim's streaming server: what Exec, Attach and PortForward's URLs point at, as containerd's
// (the kubelet's streaming package) is. The kubelet proxies `kubectl exec/attach/port-forward`
// to these URLs; crictl and critest connect to them directly. Each URL is
// `http://ADDRESS/{exec,attach,portforward}/TOKEN` (https with --streaming-tls-cert/-key), the
// token single-use and short-lived (tokens.ts): the URL is the credential, so the server listens
// on loopback unless told otherwise (containerd's default too), and anywhere else only over TLS. The protocols (SPDY/3.1 and WebSocket, exec/attach and
// port-forward) are the virtual node's own implementation, from @cello/controller/streaming,
// relaying to the cell through the controller API; so is the idle timeout of established streams
// (the kubelet's streamingConnectionIdleTimeout).
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { BlockList, isIP, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { CelloError } from '@cello/proto';
import type { ControllerApiClient } from '@cello/controller/client';
import { KubeletStreams, refuseUpgrade, type StreamRequest } from '@cello/controller/streaming';
import { TokenCache } from './tokens.js';

export interface StreamServerOptions {
  controller: ControllerApiClient;
  /** HOST:PORT to listen on; port 0 picks a free one. */
  listen: string;
  logger: Logger;
  /** How long a URL stays valid (default: the kubelet's one minute). */
  tokenTtlMs?: number;
  /** An established stream with no traffic either way this long is closed (default: the kubelet's 4 h; 0: never). */
  idleTimeoutMs?: number;
  /** Serve HTTPS (the URLs say https). Required off loopback (checkStreamingListen). */
  tls?: StreamingTls;
}

/** The PEM certificate (chain) and key, read and checked as a pair by checkStreamingListen. */
export interface StreamingTls {
  cert: Buffer;
  key: Buffer;
}

const PATHS: Record<string, StreamRequest['kind']> = { exec: 'exec', attach: 'attach', portforward: 'portForward' };

/** `host:port`, `[v6]:port`. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new CelloError('InvalidArgument', `--streaming-listen ${JSON.stringify(listen)}: expected HOST:PORT, e.g. 127.0.0.1:0 (port 0: any free port)`);
  return { host: (m[1] ?? m[2])!, port };
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** 127.0.0.0/8, ::1 or localhost: where only this node's processes (the kubelet) can connect. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const v = isIP(host);
  return v !== 0 && LOOPBACK.check(host, v === 4 ? 'ipv4' : 'ipv6');
}

/**
 * The streaming options make sense together: TLS is a certificate and its key, both or neither;
 * off loopback it is required, since each URL is a credential (its token) that plain HTTP would
 * show to the network, as would the exec'd command's input and output.
 */
export function checkStreamingListen(listen: string, tls: { cert?: string | undefined; key?: string | undefined }): StreamingTls | undefined {
  const { host } = parseListen(listen);
  if (!!tls.cert !== !!tls.key)
    throw new CelloError('InvalidArgument', `--streaming-tls-cert and --streaming-tls-key go together: give both (a PEM certificate and its private key) or neither`);
  if (tls.cert && tls.key) {
    const pair = { cert: readPem('--streaming-tls-cert', tls.cert), key: readPem('--streaming-tls-key', tls.key) };
    try {
      createSecureContext(pair);
    } catch (err) {
      // Not PEM, or a key that is not the certificate's.
      throw new CelloError('InvalidArgument', `--streaming-tls-cert ${JSON.stringify(tls.cert)} / --streaming-tls-key ${JSON.stringify(tls.key)}: ${(err as Error).message}`);
    }
    return pair;
  }
  if (!isLoopback(host))
    throw new CelloError(
      'InvalidArgument',
      `--streaming-listen ${JSON.stringify(listen)} is not a loopback address, and without TLS the streaming server would serve plain HTTP there: its URLs are credentials and carry the exec'd commands' input and output. Give --streaming-tls-cert FILE and --streaming-tls-key FILE (PEM) to serve HTTPS, or listen on loopback (127.0.0.1:0, the default), where the kubelet is`,
    );
  return undefined;
}

function readPem(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new CelloError('InvalidArgument', `${flag} ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

export class StreamServer {
  private readonly tokens: TokenCache<StreamRequest>;
  private readonly streams: KubeletStreams;
  private readonly server: Server;
  private base = '';
  private readonly scheme: 'http' | 'https';

  constructor(private readonly o: StreamServerOptions) {
    this.tokens = new TokenCache<StreamRequest>(o.tokenTtlMs);
    this.streams = new KubeletStreams({
      controller: o.controller,
      log: o.logger.child({ component: 'streaming' }),
      ...(o.idleTimeoutMs !== undefined ? { idleTimeoutMs: o.idleTimeoutMs } : {}),
    });
    const plain = (req: IncomingMessage, res: ServerResponse) => {
      // Every stream is an upgrade (SPDY or WebSocket); a plain request is a client that cannot stream.
      res.writeHead(req.url && this.route(req) ? 400 : 404, { 'content-type': 'text/plain', connection: 'close' });
      res.end(req.url && this.route(req) ? 'this endpoint streams: upgrade to SPDY/3.1 or WebSocket\n' : '404 page not found\n');
    };
    this.scheme = o.tls ? 'https' : 'http';
    // The https server is an http one over TLS: the same requests, upgrades and close.
    this.server = o.tls ? (createHttpsServer({ cert: o.tls.cert, key: o.tls.key }, plain) as unknown as Server) : createServer(plain);
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.upgrade(req, socket, head));
  }

  async listen(): Promise<string> {
    const { host, port } = parseListen(this.o.listen);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    const bound = (this.server.address() as { port: number }).port;
    this.base = `${this.scheme}://${host.includes(':') ? `[${host}]` : host}:${bound}`;
    return this.base;
  }

  /** The URL for a request; its token is good for one connection within the TTL. */
  url(r: StreamRequest): string {
    const path = r.kind === 'portForward' ? 'portforward' : r.kind;
    return `${this.base}/${path}/${this.tokens.insert(r)}`;
  }

  private route(req: IncomingMessage): { kind: StreamRequest['kind']; token: string } | undefined {
    const path = new URL(req.url ?? '/', 'http://cri').pathname;
    const m = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]+)$/.exec(path);
    return m ? { kind: PATHS[m[1]!]!, token: m[2]! } : undefined;
  }

  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on('error', (err) => this.o.logger.debug({ err: err.message }, 'streaming connection error'));
    const route = this.route(req);
    // As the kubelet's streaming server: an unknown, used or expired token is simply not found.
    const r = route ? this.tokens.consume(route.token) : undefined;
    if (!route || !r || r.kind !== route.kind) {
      this.o.logger.info({ url: route ? `/${route.kind}/…` : req.url }, 'streaming request refused: no such token (unknown, used or expired)');
      return refuseUpgrade(socket, 404, 'Not Found', '404 page not found');
    }
    this.streams.serve(req, socket, head, r);
  }

  /** Open streams (SPDY sessions) and URLs not yet used. */
  stats(): { sessions: number; pendingTokens: number } {
    return { sessions: this.streams.stats().sessions, pendingTokens: this.tokens.size };
  }

  async close(): Promise<void> {
    this.streams.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
