// The controller's half of a cell bootstrap, independent of the wire protocol: the agent has
// sent its cell ID, the one-time token from its user data, and a CSR for a key it made itself.
// Order matters: the CSR is checked before the token is consumed, so a malformed request does
// not burn the token of a cell that could still bootstrap correctly; the certificate is signed
// only after the token was accepted, and names the cell the token was issued for.
import type { CertificateAuthority } from './ca.js';
import type { BootstrapTokens } from './tokens.js';

export interface BootstrapRequest {
  cellId: string;
  token: string;
  csrPem: string;
  /** Addresses the controller knows for this cell (never taken from the agent's word alone). */
  ips?: string[];
  dnsNames?: string[];
  ttlSeconds?: number;
}

export async function completeBootstrap(ca: CertificateAuthority, tokens: BootstrapTokens, req: BootstrapRequest): Promise<{ certPem: string; caPem: string }> {
  await ca.verifyCsr(req.csrPem);
  await tokens.consumeBootstrapToken(req.cellId, req.token);
  const certPem = await ca.signCsr(req.csrPem, { cellId: req.cellId, ips: req.ips, dnsNames: req.dnsNames, ttlSeconds: req.ttlSeconds });
  return { certPem, caPem: ca.certPem };
}
