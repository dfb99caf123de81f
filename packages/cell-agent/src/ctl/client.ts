// Connecting to an agent, for `cell-agent ctl` and for tests.
import { readFileSync } from 'node:fs';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import type { CellAgentClient } from '@cello/proto/cell';
import { newCellAgentClient, STREAM_CHANNEL_OPTIONS } from '../server/wire.js';

export interface ClientTls {
  cert: string;
  key: string;
  ca: string;
}

export function agentCredentials(tls: ClientTls | undefined): ChannelCredentials {
  if (!tls) return credentials.createInsecure();
  return credentials.createSsl(readFileSync(tls.ca), readFileSync(tls.key), readFileSync(tls.cert));
}

export function connectAgent(addr: string, tls: ClientTls | undefined, opts: { serverName?: string } = {}): CellAgentClient {
  // ctl carries bulk streams (logs -f, port-forward): a large HTTP/2 window (see wire.ts).
  return newCellAgentClient(addr, agentCredentials(tls), {
    ...STREAM_CHANNEL_OPTIONS,
    ...(opts.serverName ? { 'grpc.ssl_target_name_override': opts.serverName, 'grpc.default_authority': opts.serverName } : {}),
  });
}
