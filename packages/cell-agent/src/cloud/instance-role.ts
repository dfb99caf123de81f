// The credentials of the cell's instance role (the instance profile EC2 launched it with), from
// instance metadata, as the SDK's own IMDS provider would get them — but through the agent's
// IMDSv2 client, so the metadata URL is the one the agent was given. Kept until five minutes
// before they expire; EC2 rotates them well before that.
import type { ImdsClient } from './imds.js';

export interface RoleCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
}

const ROLES = '/latest/meta-data/iam/security-credentials/';
const EARLY_MS = 5 * 60_000;

/** A credential provider (the AWS SDK's shape) for the instance's role. */
export function instanceRoleCredentials(imds: ImdsClient, now: () => number = Date.now): () => Promise<RoleCredentials> {
  let cached: RoleCredentials | undefined;
  return async () => {
    if (cached && cached.expiration.getTime() - EARLY_MS > now()) return cached;
    const role = (await imds.get(ROLES))?.split('\n')[0]?.trim();
    if (!role) throw new Error('the instance has no instance profile (no role under iam/security-credentials in instance metadata)');
    const body = await imds.get(`${ROLES}${encodeURIComponent(role)}`);
    if (body === undefined) throw new Error(`instance metadata has no credentials for role "${role}"`);
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(body) as Record<string, unknown>;
    } catch {
      throw new Error(`instance metadata credentials for role "${role}" are not JSON`);
    }
    if (v['Code'] !== undefined && v['Code'] !== 'Success') throw new Error(`instance metadata credentials for role "${role}": ${String(v['Code'])}`);
    const [id, secret, token, exp] = [v['AccessKeyId'], v['SecretAccessKey'], v['Token'], v['Expiration']];
    if (typeof id !== 'string' || typeof secret !== 'string' || typeof token !== 'string' || typeof exp !== 'string' || Number.isNaN(Date.parse(exp)))
      throw new Error(`instance metadata credentials for role "${role}": AccessKeyId, SecretAccessKey, Token and Expiration are required`);
    cached = { accessKeyId: id, secretAccessKey: secret, sessionToken: token, expiration: new Date(exp) };
    return cached;
  };
}
