// TCP connections to ports inside the pod's network namespace.
//
// Node cannot setns(2) a socket into another network namespace, so a helper does it: one long
// lived relay per namespace, started with `nsenter --net=PATH node -e RELAY`, listening on a Unix
// socket in the agent's filesystem (path-bound Unix sockets are reachable across network
// namespaces). Per connection the agent sends "PORT\n", the relay connects to 127.0.0.1:PORT
// inside the namespace and answers "OK\n" or "ERR message\n", then both sides just pipe bytes,
// half-close included. One process for all connections keeps the per-connection cost to a
// socket pair and the throughput to a plain splice of two sockets through one event loop.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const RELAY = String.raw`
const net = require('net');
const sock = process.argv[1];
const srv = net.createServer({ allowHalfOpen: true }, (c) => {
  let head = Buffer.alloc(0);
  c.on('error', () => {});
  const onData = (d) => {
    head = Buffer.concat([head, d]);
    const nl = head.indexOf(10);
    if (nl === -1) { if (head.length > 32) c.destroy(); return; }
    c.off('data', onData);
    c.pause();
    const port = Number(head.subarray(0, nl).toString());
    const rest = head.subarray(nl + 1);
    let up = false;
    const t = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    t.setNoDelay(true);
    // Errors tear both down; orderly ends travel through pipe() as half-closes, and each socket
    // closes itself once both of its directions are done and flushed (destroying on 'close'
    // would drop bytes still queued for the slower side).
    t.on('error', (e) => { if (!up) c.end('ERR ' + e.message + '\n'); else { c.destroy(); } });
    c.on('error', () => t.destroy());
    t.once('connect', () => {
      up = true;
      c.write('OK\n');
      if (rest.length) t.write(rest);
      c.pipe(t);
      t.pipe(c);
      c.resume();
    });
  };
  c.on('data', onData);
});
srv.listen(sock, () => process.stdout.write('READY\n'));
// The agent holds our stdin: when it goes away, so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/** A connection could not be made; the message says why (e.g. connection refused). */
export class PortForwardError extends Error {
  override name = 'PortForwardError';
}

interface Relay {
  proc: ChildProcess;
  socket: string;
  ready: Promise<void>;
}

export class PortForwarder {
  private readonly relays = new Map<string, Relay>();
  private readonly dir: string;

  constructor(opts: { nsenterPath?: string } = {}) {
    this.nsenter = opts.nsenterPath ?? 'nsenter';
    this.dir = mkdtempSync(join(tmpdir(), 'cello-pf-'));
  }

  private readonly nsenter: string;

  /** A connected socket to 127.0.0.1:port in `netnsPath` (the agent's own namespace if undefined). */
  async connect(netnsPath: string | undefined, port: number): Promise<Socket> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PortForwardError(`port ${port} is not a TCP port (1-65535)`);
    if (netnsPath === undefined) return this.direct(port);
    const relay = this.relayFor(netnsPath);
    await relay.ready;
    return new Promise<Socket>((resolve, reject) => {
      const s = connect({ path: relay.socket, allowHalfOpen: true });
      let head = Buffer.alloc(0);
      const fail = (err: Error) => {
        s.destroy();
        reject(err);
      };
      s.once('error', fail);
      const early = () => fail(new PortForwardError('relay closed the connection'));
      const onData = (d: Buffer) => {
        head = Buffer.concat([head, d]);
        const nl = head.indexOf(10);
        if (nl === -1) return;
        s.off('data', onData);
        s.pause();
        s.off('error', fail);
        s.off('end', early);
        const line = head.subarray(0, nl).toString();
        const rest = head.subarray(nl + 1);
        if (line !== 'OK') return fail(new PortForwardError(line.replace(/^ERR /, '')));
        if (rest.length > 0) s.unshift(rest);
        resolve(s);
      };
      s.on('data', onData);
      s.once('end', early);
      s.write(`${port}\n`);
    });
  }

  private direct(port: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      s.once('error', (e) => reject(new PortForwardError(e.message)));
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(s);
      });
    });
  }

  private relayFor(netnsPath: string): Relay {
    const have = this.relays.get(netnsPath);
    if (have !== undefined && have.proc.exitCode === null && have.proc.signalCode === null) return have;
    const socket = join(this.dir, `relay-${this.relays.size}-${Date.now()}.sock`);
    const proc = spawn(this.nsenter, [`--net=${netnsPath}`, process.execPath, '-e', RELAY, socket], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PortForwardError(`relay in ${netnsPath} did not start within 10 s: ${stderr}`)), 10_000);
      proc.stdout!.on('data', (d: Buffer) => {
        if (d.toString().includes('READY')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        this.relays.delete(netnsPath);
        reject(new PortForwardError(`relay in ${netnsPath} exited (${code}): ${stderr.trim()}`));
      });
      proc.once('error', (e) => {
        clearTimeout(timer);
        reject(new PortForwardError(`cannot start nsenter: ${e.message}`));
      });
    });
    ready.catch(() => {});
    const relay = { proc, socket, ready };
    this.relays.set(netnsPath, relay);
    return relay;
  }

  close(): void {
    for (const r of this.relays.values()) r.proc.kill('SIGKILL');
    this.relays.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
