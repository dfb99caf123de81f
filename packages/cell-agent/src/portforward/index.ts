// TCP connections to ports inside the pod's network namespace.
//
// Node cannot setns(2) a socket into another network namespace, so a helper does the connect:
// one long-lived helper per namespace, started with `nsenter --net=PATH node -e HELPER` and
// spoken to over Node's IPC channel. Per connection the agent sends {id, port}; the helper
// connects to 127.0.0.1:PORT inside the namespace and hands the connected socket itself back
// (`process.send(msg, socket)` passes the file descriptor with SCM_RIGHTS). A socket keeps the
// namespace it was created in, so from then on the agent reads and writes the pod's socket
// directly: no extra process, no pipe, no second copy of every byte. (An earlier design relayed
// every byte through the helper over a Unix socket; that hop cost most of the throughput.)
import { spawn, type ChildProcess } from 'node:child_process';
import { CelloError } from '@cello/proto';
import type { Socket } from 'node:net';
import { connect } from 'node:net';

// CommonJS, run by `node -e` inside the namespace. The socket is paused before it connects, so
// not one byte is read here: whatever the pod sends waits in the kernel for the agent.
const HELPER = String.raw`
const net = require('net');
process.on('message', (m) => {
  if (m === null || typeof m !== 'object' || typeof m.id !== 'number' || typeof m.port !== 'number') return;
  const s = new net.Socket({ allowHalfOpen: true });
  s.pause();
  let settled = false;
  s.once('error', (e) => {
    if (settled) return;
    settled = true;
    s.destroy();
    process.send({ id: m.id, error: e.message });
  });
  s.connect({ host: '127.0.0.1', port: m.port }, () => {
    settled = true;
    // After sending, Node closes our copy of the descriptor; the agent owns the connection.
    process.send({ id: m.id }, s, (err) => { if (err) s.destroy(); });
  });
});
// The agent holds the IPC channel: when it goes away, so do we.
process.on('disconnect', () => process.exit(0));
process.send({ ready: true });
`;

/** Why `port` cannot be forwarded to ("port N is not a TCP port (1-65535)"), or undefined. */
export function checkForwardPort(port: number): string | undefined {
  return Number.isInteger(port) && port >= 1 && port <= 65535 ? undefined : `port ${port} is not a TCP port (1-65535)`;
}

/** A connection could not be made; the message says why (e.g. connection refused). */
export class PortForwardError extends CelloError {
  constructor(message: string) {
    super('Unavailable', message);
  }
}

interface Pending {
  resolve(s: Socket): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

interface Helper {
  proc: ChildProcess;
  ready: Promise<void>;
  pending: Map<number, Pending>;
}

const CONNECT_TIMEOUT_MS = 10_000;

export class PortForwarder {
  private readonly helpers = new Map<string, Helper>();
  private readonly nsenter: string;
  private nextId = 1;

  constructor(opts: { nsenterPath?: string } = {}) {
    this.nsenter = opts.nsenterPath ?? 'nsenter';
  }

  /** A connected socket to 127.0.0.1:port in `netnsPath` (the agent's own namespace if undefined). */
  async connect(netnsPath: string | undefined, port: number): Promise<Socket> {
    const bad = checkForwardPort(port);
    if (bad !== undefined) throw new PortForwardError(bad);
    if (netnsPath === undefined) return this.direct(port);
    const helper = this.helperFor(netnsPath);
    await helper.ready;
    const id = this.nextId++;
    return new Promise<Socket>((resolve, reject) => {
      const timer = setTimeout(() => {
        helper.pending.delete(id);
        reject(new PortForwardError(`connecting to port ${port} took longer than ${CONNECT_TIMEOUT_MS / 1000} s`));
      }, CONNECT_TIMEOUT_MS);
      helper.pending.set(id, { resolve, reject, timer });
      helper.proc.send({ id, port }, (err) => {
        if (err === null) return;
        const p = helper.pending.get(id);
        if (p === undefined) return;
        helper.pending.delete(id);
        clearTimeout(p.timer);
        reject(new PortForwardError(`port-forward helper in ${netnsPath} is gone: ${err.message}`));
      });
    });
  }

  private direct(port: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      s.pause();
      s.once('error', (e) => reject(new PortForwardError(e.message)));
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(s);
      });
    });
  }

  private helperFor(netnsPath: string): Helper {
    const have = this.helpers.get(netnsPath);
    if (have !== undefined && have.proc.exitCode === null && have.proc.signalCode === null && have.proc.connected) return have;
    const proc = spawn(this.nsenter, [`--net=${netnsPath}`, process.execPath, '-e', HELPER], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      // JSON over the channel: messages are tiny, and 'advanced' gains nothing here.
      serialization: 'json',
    });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    const pending = new Map<number, Pending>();
    const helper: Helper = { proc, pending, ready: Promise.resolve() };
    const failAll = (err: Error) => {
      for (const p of pending.values()) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      pending.clear();
    };
    helper.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PortForwardError(`port-forward helper in ${netnsPath} did not start within 10 s: ${stderr}`)), 10_000);
      proc.on('message', (msg: { ready?: boolean; id?: number; error?: string }, handle: unknown) => {
        if (msg.ready) {
          clearTimeout(timer);
          resolve();
          return;
        }
        const p = msg.id === undefined ? undefined : pending.get(msg.id);
        if (p === undefined) {
          (handle as Socket | undefined)?.destroy(); // its request timed out meanwhile
          return;
        }
        pending.delete(msg.id!);
        clearTimeout(p.timer);
        if (msg.error !== undefined || handle === undefined) return p.reject(new PortForwardError(msg.error ?? 'the helper sent no socket'));
        const s = handle as Socket;
        // Sockets made from a passed handle default to closing our side when the pod's side
        // ends; port-forward relays half-closes instead.
        s.allowHalfOpen = true;
        s.pause();
        p.resolve(s);
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        if (this.helpers.get(netnsPath) === helper) this.helpers.delete(netnsPath);
        const err = new PortForwardError(`port-forward helper in ${netnsPath} exited (${code ?? signal}): ${stderr.trim()}`);
        reject(err);
        failAll(err);
      });
      proc.once('error', (e) => {
        clearTimeout(timer);
        const err = new PortForwardError(`cannot start nsenter: ${e.message}`);
        reject(err);
        failAll(err);
      });
    });
    helper.ready.catch(() => {});
    this.helpers.set(netnsPath, helper);
    return helper;
  }

  close(): void {
    for (const h of this.helpers.values()) h.proc.kill('SIGKILL');
    this.helpers.clear();
  }
}
