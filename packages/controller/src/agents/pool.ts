// Connections to cell agents. One gRPC client per cell, created on first use and closed when
// the cell goes; credentials are mTLS with the controller's client certificate (the agent's
// certificate must name the cell), or plaintext for --insecure-dev agents in development.
import { credentials, Metadata, type ChannelCredentials, type ChannelOptions, type Client, type ServiceError } from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { CellAgentClient, CellCertificatesClient } from '@cello/proto/cell';
import { cellServerIdentityCheck } from '../security/identity.js';

export interface AgentCredentials {
  /** Channel credentials for talking to the agent of this cell. */
  forCell(cellId: string): ChannelCredentials;
  /** Extra channel options, e.g. the TLS name to verify (the cell ID). */
  options?(cellId: string): ChannelOptions;
  /** Changes when the credentials do (a renewed client certificate): channels are then rebuilt. */
  version?(): string;
}

export const insecureAgentCredentials: AgentCredentials = {
  forCell: () => credentials.createInsecure(),
};

/**
 * mTLS: the agent must present a certificate from our CA that names the cell (its spiffe URI).
 * Every handshake also reports the certificate the cell presented (`onServerCertificate`), which
 * is how the renewer learns when each cell's certificate expires.
 */
export function mtlsAgentCredentials(
  get: () => { caPem: string; certPem: string; keyPem: string },
  opts: { trustDomain?: string; onServerCertificate?: (cellId: string, cert: PeerCertificate) => void } = {},
): AgentCredentials {
  return {
    forCell: (cellId) => {
      const c = get();
      const check = cellServerIdentityCheck(cellId, opts.trustDomain);
      return credentials.createSsl(Buffer.from(c.caPem), Buffer.from(c.keyPem), Buffer.from(c.certPem), {
        checkServerIdentity: (host, cert) => {
          const err = check(host, cert);
          if (!err) opts.onServerCertificate?.(cellId, cert);
          return err;
        },
      });
    },
    options: (cellId) => ({ 'grpc.ssl_target_name_override': cellId, 'grpc.default_authority': cellId }),
    version: () => get().certPem,
  };
}

interface Entry {
  address: string;
  client: CellAgentClient;
  version: string;
}

/** How the reconciler and API reach a cell's agent (a real gRPC pool, or the benchmark's simulation). */
export interface AgentAccess {
  get(cellId: string, address: string): CellAgentClient;
  /** The certificate-renewal service on the same channel (mTLS agents only). */
  certificates?(cellId: string, address: string): CellCertificatesClient;
  drop(cellId: string): void;
  closeAll(): void;
}

export class AgentPool implements AgentAccess {
  private readonly clients = new Map<string, Entry>();
  constructor(private readonly creds: AgentCredentials) {}

  get(cellId: string, address: string): CellAgentClient {
    const e = this.clients.get(cellId);
    const version = this.creds.version?.() ?? '';
    // A renewed controller certificate takes effect on new channels; calls already running on
    // the old channel finish there (grpc-js close() lets them complete).
    if (e && e.address === address && e.version === version) return e.client;
    e?.client.close();
    const client = new CellAgentClient(address, this.creds.forCell(cellId), {
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      // Logs and port-forward relay through here: HTTP/2's default 64 KiB window would make the
      // agent wait one round trip per window.
      'grpc-node.flow_control_window': 8 << 20,
      ...(this.creds.options?.(cellId) ?? {}),
    });
    this.clients.set(cellId, { address, client, version });
    return client;
  }

  certificates(cellId: string, address: string): CellCertificatesClient {
    // A second stub on the agent channel: no extra connection, and it follows channel rebuilds.
    const channel = this.get(cellId, address).getChannel();
    // (grpc-js ignores the credentials argument when channelOverride is given.)
    return new CellCertificatesClient(address, credentials.createInsecure(), { channelOverride: channel });
  }

  drop(cellId: string): void {
    this.clients.get(cellId)?.client.close();
    this.clients.delete(cellId);
  }

  closeAll(): void {
    for (const e of this.clients.values()) e.client.close();
    this.clients.clear();
  }
}

/** A unary call with a deadline, as a promise. */
export function callUnary<Res>(client: Client, method: string, req: unknown, timeoutMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[method];
    if (typeof fn !== 'function') return reject(new Error(`no such method ${method}`));
    fn.call(client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}
