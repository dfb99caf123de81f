// What every stream RPC module shares: the units, the agent's logger and metrics, the audit log,
// the open sessions that close() must end, and the small gRPC helpers they all answer with.
import { once } from 'node:events';
import { type status as Status, type ServerDuplexStream, type ServerWritableStream, type ServiceError } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { AuditLog } from '../../audit/index.js';
import type { AgentMetrics } from '../../metrics/index.js';
import type { PortForwarder } from '../../portforward/index.js';
import type { PortForwardStreamListener } from '../../portforward/stream-listener.js';
import type { UnitDirectory } from '../../units/unit-view.js';

export interface StreamContext {
  readonly units: UnitDirectory;
  /** The streams' own child logger (component "streams"). */
  readonly log: Logger;
  readonly metrics: AgentMetrics | undefined;
  /** Undefined when the agent keeps no audit log: sessions are then not recorded. */
  readonly audit: AuditLog | undefined;
  readonly forwarder: PortForwarder;
  readonly runcPath: string | undefined;
  readonly portForwardStream: Pick<PortForwardStreamListener, 'port' | 'issue'> | undefined;
  /** Each open call's way to end itself; close() calls them all. A call removes its own when it ends. */
  readonly live: Set<() => void>;
}

export function grpcError(code: Status, message: string): Partial<ServiceError> {
  return { code, details: message, message };
}

/** Ends a server stream with a status (grpc-js turns an 'error' event into the call's status). */
export function failStream(call: ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>, code: Status, message: string): void {
  call.emit('error', grpcError(code, message));
}

/** Writes with flow control: waits for 'drain' when the client is slow; false if the call died. */
export async function send<T>(call: ServerWritableStream<unknown, T> | ServerDuplexStream<unknown, T>, msg: T, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return false;
  if (call.write(msg)) return true;
  try {
    await once(call, 'drain', { signal });
    return true;
  } catch {
    return false;
  }
}

/** Who called, for the audit log: the certificate's identity when there is one, else the address. */
export function peerOf(call: ServerDuplexStream<unknown, unknown>): string {
  try {
    const cert = call.getAuthContext?.()?.sslPeerCertificate;
    // The certificate's identity (spiffe URI) says which component called, not just a name.
    const uri = /(?:^|, )URI:(spiffe:\/\/[^,]+)/.exec(cert?.subjectaltname ?? '')?.[1];
    if (uri) return `${uri} (${call.getPeer()})`;
    if (cert?.subject) {
      const cn = (cert.subject as unknown as Record<string, string>).CN;
      if (cn) return `CN=${cn} (${call.getPeer()})`;
    }
  } catch {
    /* plaintext */
  }
  return call.getPeer();
}
