// The client's side of the agent's port-forward stream port (stream-listener.ts): connect
// (TLS with the client identity when the API is mTLS), send the ticket's token, read the
// one-line answer. The connection is then ready for relay(), reading into a static buffer.
import { connect as tcpConnect, isIP, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { StaticReads, type RelayEnd } from './relay.js';
import { CelloError } from '@cello/proto';

export const DEFAULT_STREAM_OPEN_TIMEOUT_MS = 10_000;
const MAX_ANSWER_BYTES = 4096;

export interface StreamClientTls {
  ca: Buffer | string;
  /** The client identity; an agent serving mTLS refuses a client without one. */
  cert?: Buffer | string;
  key?: Buffer | string;
  /** Name to expect in the agent's certificate (default: host). */
  serverName?: string;
}

export interface OpenStreamOptions {
  host: string;
  port: number;
  token: Uint8Array;
  tls?: StreamClientTls;
  timeoutMs?: number;
}

/** The agent refused the connection; the message is its answer (e.g. "cannot connect to port 81 in the pod: ..."). */
export class StreamRefusedError extends CelloError {
  constructor(message: string) {
    super('FailedPrecondition', message);
  }
}

/** An open, accepted stream connection, ready to relay (bytes after the answer line are in `early`). */
export function openStreamConnection(o: OpenStreamOptions): Promise<RelayEnd> {
  const reads = new StaticReads();
  let socket: Socket;
  if (o.tls) {
    const name = o.tls.serverName ?? o.host;
    // allowHalfOpen and onread are passed on to the socket under TLS (Node 20); the typings
    // omit them.
    const opts: ConnectionOptions & { allowHalfOpen: boolean; onread: StaticReads['onread'] } = {
      host: o.host,
      port: o.port,
      ca: o.tls.ca,
      ...(o.tls.cert !== undefined && o.tls.key !== undefined ? { cert: o.tls.cert, key: o.tls.key } : {}),
      // SNI may not carry an IP address; the certificate is checked against the name either way.
      ...(isIP(name) ? {} : { servername: name }),
      checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
      allowHalfOpen: true,
      onread: reads.onread,
    };
    socket = tlsConnect(opts);
  } else {
    socket = tcpConnect({ host: o.host, port: o.port, allowHalfOpen: true, onread: reads.onread });
  }
  const timeoutMs = o.timeoutMs ?? DEFAULT_STREAM_OPEN_TIMEOUT_MS;
  return new Promise<RelayEnd>((resolve, reject) => {
    let answer: Buffer = Buffer.alloc(0);
    let settled = false;
    const settle = (err: Error | undefined, early: Buffer[] = []) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('error', onError);
      socket.off('end', onEnd);
      if (err) {
        socket.destroy();
        return reject(err);
      }
      // Until relay() resumes it, nothing more is read.
      socket.pause();
      socket.on('error', () => {});
      resolve({ socket, reads, early });
    };
    const timer = setTimeout(() => settle(new Error(`the agent's stream port ${o.host}:${o.port} did not answer within ${timeoutMs / 1000} s`)), timeoutMs);
    const onError = (e: Error) => settle(new Error(`stream port ${o.host}:${o.port}: ${e.message}`));
    const onEnd = () =>
      settle(
        new StreamRefusedError(
          answer.length > 0
            ? `the agent closed the stream connection mid-answer: ${answer.toString()}`
            : `the agent closed the stream connection without an answer${o.tls ? " (TLS: is the client certificate from the agent's CA?)" : ''}`,
        ),
      );
    socket.on('error', onError);
    socket.on('end', onEnd);
    socket.once(o.tls ? 'secureConnect' : 'connect', () => {
      socket.setNoDelay(true);
      socket.write(o.token);
    });
    reads.setSink((view) => {
      // (a view of the read buffer, which the next read reuses: keep a copy)
      answer = Buffer.concat([answer, view]);
      const nl = answer.indexOf(10);
      if (nl < 0) {
        if (answer.length > MAX_ANSWER_BYTES) settle(new Error("the agent's answer on the stream port is not a status line"));
        return false;
      }
      const line = answer.subarray(0, nl).toString('utf8');
      const rest = answer.subarray(nl + 1);
      reads.setSink(undefined);
      if (line === 'ok') settle(undefined, rest.length > 0 ? [rest] : []);
      else settle(new StreamRefusedError(line.startsWith('error: ') ? line.slice('error: '.length) : `unexpected answer from the agent: ${line.slice(0, 200)}`));
      return false;
    });
  });
}
