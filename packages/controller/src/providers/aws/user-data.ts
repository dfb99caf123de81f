// The user data of a cell: what its agent needs to be bootstrapped by this controller and
// nothing more — the controller's CA certificate (public), the agent's configuration and a
// one-time, short-lived token. No private key and no long-lived secret ever goes here: user
// data is readable by anything on the instance that can reach the metadata service, and it is
// kept by EC2 for the life of the instance.
//
// Format (documented in docs/aws.md; parsed by the agent's src/bootstrap/user-data.ts):
// one JSON object, {"cello": "cell-bootstrap/v1", ...CellBootstrapData}. JSON is not a
// format cloud-init acts on, so images with cloud-init leave it alone.
import type { CellBootstrapData } from '../provider.js';

export const USER_DATA_FORMAT = 'cell-bootstrap/v1';
/** EC2's limit on user data before base64. */
export const USER_DATA_MAX_BYTES = 16 * 1024;

const PRIVATE_KEY_RE = /-----BEGIN [A-Z ]*PRIVATE KEY-----/;

/** The user data bytes for a cell, checked against EC2's size limit and for private keys. */
export function encodeUserData(b: CellBootstrapData): Buffer {
  const body = {
    cello: USER_DATA_FORMAT,
    controllerId: b.controllerId,
    cellId: b.cellId,
    agentPort: b.agentPort,
    caCertPem: b.caCertPem,
    token: b.token,
    tokenExpiresAt: b.tokenExpiresAt,
    ...(b.agentConfig ? { agentConfig: b.agentConfig } : {}),
  };
  const text = JSON.stringify(body);
  if (PRIVATE_KEY_RE.test(text)) {
    throw new Error(`bootstrap for cell ${b.cellId}: refusing to put a private key into user data`);
  }
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > USER_DATA_MAX_BYTES) {
    throw new Error(
      `bootstrap for cell ${b.cellId}: user data is ${bytes.length} bytes, over EC2's limit of ${USER_DATA_MAX_BYTES} ` + '(bootstrap.agentConfig is the usual culprit)',
    );
  }
  return bytes;
}

/** Reads user data back (tests and `cellctl describe`); throws naming what is wrong. */
export function decodeUserData(bytes: Buffer | string): CellBootstrapData {
  const text = typeof bytes === 'string' ? bytes : bytes.toString('utf8');
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new Error('user data is not JSON');
  }
  if (v['cello'] !== USER_DATA_FORMAT) throw new Error(`user data: cello: expected "${USER_DATA_FORMAT}"`);
  for (const f of ['controllerId', 'cellId', 'caCertPem', 'token', 'tokenExpiresAt'] as const) {
    if (typeof v[f] !== 'string' || v[f] === '') throw new Error(`user data: ${f}: required string`);
  }
  if (typeof v['agentPort'] !== 'number') throw new Error('user data: agentPort: required number');
  return {
    controllerId: v['controllerId'] as string,
    cellId: v['cellId'] as string,
    caCertPem: v['caCertPem'] as string,
    token: v['token'] as string,
    tokenExpiresAt: v['tokenExpiresAt'] as string,
    agentPort: v['agentPort'] as number,
    ...(v['agentConfig'] ? { agentConfig: v['agentConfig'] as Record<string, unknown> } : {}),
  };
}
