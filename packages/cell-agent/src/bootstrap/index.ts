// Cell bootstrap, agent side. THE HOOK FOR `cell-agent serve` (packages/cell-agent/src/cli.ts):
//
//   --bootstrap-user-data FILE | --user-data-url URL   (URL: http://169.254.169.254 on EC2)
//
//   const id = await prepareCellIdentity({ userData: { file } | { imdsUrl }, stateDir, listen, logger });
//   await startAgent({ ...opts, listen: id.listen, tls: id.tls, cellId: id.cellId });
//
// prepareCellIdentity returns at once when STATE/identity already holds a valid certificate
// from the user data's CA (a restarted agent); otherwise it serves only CellBootstrap until the
// controller has installed a certificate, then returns the files for the mTLS server.
import { existsSync } from 'node:fs';
import type { Logger } from 'pino';
import { existingIdentity, identityFiles } from './identity.js';
import { startBootstrapServer, type BootstrapServer } from './server.js';
import { DEFAULT_TRUST_DOMAIN } from './x509.js';
import { readUserData, type CellUserData, type UserDataSource } from './user-data.js';

export { readUserData, parseUserData, USER_DATA_FORMAT, type CellUserData, type UserDataSource } from './user-data.js';
export { startBootstrapServer, type BootstrapServer, type BootstrapServerOptions } from './server.js';
export { identityFiles, type IdentityFiles } from './identity.js';
export { firstBoot, type FirstBootOptions, type FirstBootResult } from './first-boot.js';

export interface PrepareIdentityOptions {
  userData: UserDataSource | CellUserData;
  stateDir: string;
  /** host:port for the bootstrap listener and, afterwards, the agent; default 0.0.0.0:<agentPort>. */
  listen?: string;
  logger: Logger;
  /** Called with the bootstrap listener once it is up (tests, readiness). */
  onListening?: (s: BootstrapServer) => void;
  signal?: AbortSignal;
}

export interface CellIdentity {
  cellId: string;
  controllerId: string;
  listen: string;
  /** For startAgent's `tls`: mTLS with the controller's CA. */
  tls: { cert: string; key: string; ca: string };
  agentConfig?: Record<string, unknown>;
  /** False when an identity from an earlier boot was reused. */
  bootstrapped: boolean;
}

export async function prepareCellIdentity(o: PrepareIdentityOptions): Promise<CellIdentity> {
  const ud: CellUserData = 'cello' in o.userData ? o.userData : await readUserData(o.userData);
  const files = identityFiles(o.stateDir);
  const listen = o.listen ?? `0.0.0.0:${ud.agentPort}`;
  const result = (bootstrapped: boolean): CellIdentity => ({
    cellId: ud.cellId,
    controllerId: ud.controllerId,
    listen,
    tls: { cert: files.cert, key: files.key, ca: files.ca },
    ...(ud.agentConfig ? { agentConfig: ud.agentConfig } : {}),
    bootstrapped,
  });
  if (existsSync(files.cert) && (await existingIdentity(files, ud.caCertPem, { cellId: ud.cellId, trustDomain: ud.trustDomain ?? DEFAULT_TRUST_DOMAIN }))) {
    o.logger.info({ cellId: ud.cellId }, 'reusing the certificate from an earlier boot');
    return result(false);
  }
  const server = await startBootstrapServer({ userData: ud, stateDir: o.stateDir, listen, logger: o.logger });
  o.onListening?.(server);
  const onAbort = () => void server.close();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await server.installed;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
  return result(true);
}
