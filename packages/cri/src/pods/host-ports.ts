// A sandbox's host ports on this node. On a kubelet node `hostPort` means "reachable at this
// node's address" (the CNI portmap plugin DNATs node:hostPort to the pod). A cello-cri pod runs on
// its cell, so the shim listens on host_ip:host_port here itself and relays each connection (TCP)
// or each client's datagrams (UDP) to the cell's pod address and container_port. The listeners are
// bound before the cell is asked for, so a port already taken fails RunPodSandbox at once, and
// they close when the sandbox stops.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, connect, isIPv6, type Server, type Socket } from 'node:net';
import { CelloError } from '@cello/proto';
import type { Logger } from 'pino';
import type { SandboxRecord } from './sandbox-store.js';

type Mapping = SandboxRecord['portMappings'][number];

/** A UDP client's flow is dropped after this long without a datagram either way (as conntrack's UDP timeout). */
const UDP_IDLE_MS = 30_000;

interface Listener {
  close(): Promise<void>;
}

interface Relays {
  /** The pod's address, once its cell runs; a connection before that asks `resolve`, and is closed if there is none. */
  target: string;
  resolve: () => Promise<string>;
  listeners: Listener[];
}

/** The mappings a node listener serves: those with a host port. */
export function nodePorts(mappings: readonly Mapping[]): Mapping[] {
  return mappings.filter((p) => p.hostPort > 0);
}

export class HostPorts {
  private readonly bySandbox = new Map<string, Relays>();

  /** `address`: a sandbox's pod address, asked for when a connection comes before it is known. */
  constructor(
    private readonly logger: Logger,
    private readonly address: (sandboxId: string) => Promise<string> = () => Promise.resolve(''),
  ) {}

  /**
   * Binds every host port of a sandbox (all or none: a failure closes those already bound and
   * throws, naming the mapping). `target` may be '' until the pod's address is known (`setTarget`).
   */
  async open(sandboxId: string, mappings: readonly Mapping[], target = ''): Promise<void> {
    await this.close(sandboxId);
    const relays: Relays = { target, listeners: [], resolve: () => this.address(sandboxId) };
    this.bySandbox.set(sandboxId, relays);
    for (const [i, m] of mappings.entries()) {
      if (m.hostPort <= 0) continue;
      const field = `config.port_mappings[${i}]`;
      if (m.hostPort > 65535) throw new CelloError('InvalidArgument', `${field}.host_port: ${m.hostPort} is not a port`);
      if (m.containerPort <= 0 || m.containerPort > 65535) throw new CelloError('InvalidArgument', `${field}.container_port: ${m.containerPort} is not a port`);
      const host = m.hostIp || '0.0.0.0';
      try {
        relays.listeners.push(m.protocol === 'UDP' ? await this.udp(relays, host, m) : await this.tcp(relays, host, m));
      } catch (err) {
        await this.close(sandboxId);
        const code = (err as NodeJS.ErrnoException).code;
        const [which, why] =
          code === 'EADDRINUSE'
            ? ['host_port', 'is already in use on this node']
            : code === 'EADDRNOTAVAIL'
              ? ['host_ip', `cannot be bound: ${host} is not an address of this node`]
              : ['host_port', `cannot be bound: ${(err as Error).message}`];
        throw new CelloError('FailedPrecondition', `${field}.${which}: ${fmt(host, m.hostPort)}/${m.protocol} ${why}`, { cause: err });
      }
    }
    this.logger.info({ sandbox: sandboxId, ports: nodePorts(mappings).map((m) => `${fmt(m.hostIp || '0.0.0.0', m.hostPort)}/${m.protocol}`) }, 'host ports listening');
  }

  /** The pod's address to relay to (known once the sandbox's cell runs). */
  setTarget(sandboxId: string, ip: string): void {
    const r = this.bySandbox.get(sandboxId);
    if (r) r.target = ip;
  }

  has(sandboxId: string): boolean {
    return this.bySandbox.has(sandboxId);
  }

  /** Stops listening for a sandbox and ends its relayed connections; idempotent. */
  async close(sandboxId: string): Promise<void> {
    const r = this.bySandbox.get(sandboxId);
    if (!r) return;
    this.bySandbox.delete(sandboxId);
    await Promise.all(r.listeners.map((l) => l.close()));
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.bySandbox.keys()].map((id) => this.close(id)));
  }

  private tcp(relays: Relays, host: string, m: Mapping): Promise<Listener> {
    const conns = new Set<Socket>();
    // Half-open both ways: a client that half-closes (sends its request, then FIN) still gets the
    // answer; each direction's end is passed on by its pipe. An error or reset ends both.
    const server: Server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
      conns.add(client);
      client.on('close', () => conns.delete(client));
      client.on('error', () => undefined);
      void targetOf(relays).then((target) => {
        if (!target || client.destroyed) {
          client.destroy();
          return;
        }
        relay(client, target);
      });
    });
    const relay = (client: Socket, target: string) => {
      const upstream = connect({ host: target, port: m.containerPort, allowHalfOpen: true });
      conns.add(upstream);
      upstream.on('close', (hadError) => {
        conns.delete(upstream);
        if (hadError) client.destroy();
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('connect', () => {
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port: m.hostPort, exclusive: true }, () => {
        server.off('error', reject);
        server.on('error', (err) => this.logger.warn({ port: m.hostPort, err: err.message }, 'host port listener failed'));
        resolve({
          close: () =>
            new Promise<void>((done) => {
              for (const c of conns) c.destroy();
              server.close(() => done());
            }),
        });
      });
    });
  }

  private udp(relays: Relays, host: string, m: Mapping): Promise<Listener> {
    const sock: UdpSocket = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
    // One upstream socket per client (address:port), so the pod's replies find their way back.
    const flows = new Map<string, { up: UdpSocket; timer: NodeJS.Timeout }>();
    const drop = (key: string) => {
      const f = flows.get(key);
      if (!f) return;
      flows.delete(key);
      clearTimeout(f.timer);
      f.up.close();
    };
    const touch = (key: string) => {
      const f = flows.get(key);
      if (f) f.timer.refresh();
    };
    sock.on('message', (msg: Buffer, from: RemoteInfo) => {
      if (!relays.target) {
        // Dropped (UDP may drop), but the address is looked up for the next datagrams.
        void targetOf(relays);
        return;
      }
      const key = `${from.address}|${from.port}`;
      let f = flows.get(key);
      if (!f) {
        const up = createSocket({ type: isIPv6(relays.target) ? 'udp6' : 'udp4' });
        up.on('message', (reply) => {
          touch(key);
          sock.send(reply, from.port, from.address);
        });
        up.on('error', () => drop(key));
        const timer = setTimeout(() => drop(key), UDP_IDLE_MS);
        timer.unref();
        f = { up, timer };
        flows.set(key, f);
      }
      touch(key);
      f.up.send(msg, m.containerPort, relays.target);
    });
    return new Promise((resolve, reject) => {
      sock.once('error', reject);
      sock.bind({ address: host, port: m.hostPort, exclusive: true }, () => {
        sock.off('error', reject);
        sock.on('error', (err) => this.logger.warn({ port: m.hostPort, err: err.message }, 'host port listener failed'));
        resolve({
          close: () =>
            new Promise<void>((done) => {
              for (const key of [...flows.keys()]) drop(key);
              sock.close(() => done());
            }),
        });
      });
    });
  }
}

/** The relay's target, asking for it once when it is not known yet. */
async function targetOf(r: Relays): Promise<string> {
  if (!r.target) r.target = await r.resolve().catch(() => '');
  return r.target;
}

const fmt = (host: string, port: number) => (isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`);
