// One-time bootstrap tokens: the only secret in a cell's user data. A token proves "I am the
// instance launched for cell X" exactly once, shortly after launch; after that the cell has a
// certificate and only mutual TLS is accepted. The store keeps a SHA-256 of the token (256
// random bits need no slow hash), never the token, so reading the store does not yield one.
// Consumption deletes the record with compare-and-swap: of two concurrent presenters of the
// same token, exactly one wins.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConflictError, type Store } from '../store/store.js';
import { checkName } from './identity.js';
import { CelloError } from '../errors.js';

export const BOOTSTRAP_TOKEN_PREFIX = 'security/bootstrap-tokens/';
const MAX_TTL_SECONDS = 24 * 3600;

interface TokenRecord {
  sha256: string;
  issuedAt: number;
  expiresAt: number;
}

export type BootstrapTokenFailure = 'unknown' | 'mismatch' | 'expired' | 'used';

/** Why a token was refused. The message never contains the token. */
export class BootstrapTokenError extends CelloError {
  constructor(
    readonly reason: BootstrapTokenFailure,
    readonly cellId: string,
    detail: string,
  ) {
    super('Unauthenticated', `bootstrap token for cell ${cellId} refused (${reason}): ${detail}`);
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export class BootstrapTokens {
  private readonly prefix: string;
  private readonly now: () => number;

  constructor(
    private readonly store: Store,
    opts: { prefix?: string; now?: () => number } = {},
  ) {
    this.prefix = opts.prefix ?? BOOTSTRAP_TOKEN_PREFIX;
    this.now = opts.now ?? Date.now;
  }

  /** A fresh token for the cell, replacing any outstanding one. Put it in user data, nowhere else. */
  async issueBootstrapToken(cellId: string, ttlSeconds: number): Promise<{ token: string; expiresAt: Date }> {
    checkName(cellId, 'cellId');
    if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0 || ttlSeconds > MAX_TTL_SECONDS) {
      throw new TypeError(`ttlSeconds must be a number of seconds in (0, ${MAX_TTL_SECONDS}], got ${JSON.stringify(ttlSeconds)}`);
    }
    const token = `cbt_${randomBytes(32).toString('base64url')}`;
    const issuedAt = this.now();
    const expiresAt = issuedAt + Math.round(ttlSeconds * 1000);
    const rec: TokenRecord = { sha256: digest(token).toString('hex'), issuedAt, expiresAt };
    await this.store.put(this.prefix + cellId, rec);
    return { token, expiresAt: new Date(expiresAt) };
  }

  /** Accepts the token once, before it expires; throws BootstrapTokenError otherwise. */
  async consumeBootstrapToken(cellId: string, token: string): Promise<void> {
    checkName(cellId, 'cellId');
    if (typeof token !== 'string' || token.length === 0 || token.length > 256) {
      throw new BootstrapTokenError('mismatch', cellId, 'token is missing or malformed');
    }
    const key = this.prefix + cellId;
    const cur = await this.store.get<TokenRecord>(key);
    if (cur === undefined) {
      throw new BootstrapTokenError('unknown', cellId, 'no token is outstanding (never issued, already used, or revoked)');
    }
    const want = Buffer.from(cur.value.sha256, 'hex');
    const got = digest(token);
    if (want.length !== got.length || !timingSafeEqual(want, got)) {
      // Not burnt: a wrong guess must not let an attacker deny the real cell its bootstrap.
      throw new BootstrapTokenError('mismatch', cellId, 'token does not match');
    }
    if (this.now() >= cur.value.expiresAt) {
      await this.store.delete(key, { expectRevision: cur.modRevision }).catch(() => undefined);
      throw new BootstrapTokenError('expired', cellId, `token expired at ${new Date(cur.value.expiresAt).toISOString()}`);
    }
    try {
      await this.store.delete(key, { expectRevision: cur.modRevision });
    } catch (err) {
      if (err instanceof ConflictError) throw new BootstrapTokenError('used', cellId, 'token was consumed concurrently (replay)');
      throw err;
    }
  }

  /**
   * Checks, without consuming it, that `token` is the cell's outstanding token and has not
   * expired: a controller that resumes a bootstrap another one began asks this before it presents
   * the token again. Throws BootstrapTokenError like consumeBootstrapToken.
   */
  async verifyBootstrapToken(cellId: string, token: string): Promise<void> {
    checkName(cellId, 'cellId');
    const cur = await this.store.get<TokenRecord>(this.prefix + cellId);
    if (cur === undefined) throw new BootstrapTokenError('unknown', cellId, 'no token is outstanding (never issued, already used, or revoked)');
    const want = Buffer.from(cur.value.sha256, 'hex');
    const got = digest(typeof token === 'string' ? token : '');
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw new BootstrapTokenError('mismatch', cellId, 'token does not match');
    if (this.now() >= cur.value.expiresAt) throw new BootstrapTokenError('expired', cellId, `token expired at ${new Date(cur.value.expiresAt).toISOString()}`);
  }

  /** Forgets any outstanding token for the cell (cell deleted before it booted). */
  async revoke(cellId: string): Promise<void> {
    checkName(cellId, 'cellId');
    await this.store.delete(this.prefix + cellId);
  }

  /** Deletes expired tokens; returns how many. Run it periodically. */
  async sweepExpired(): Promise<number> {
    const { items } = await this.store.list<TokenRecord>(this.prefix);
    let n = 0;
    for (const it of items) {
      if (this.now() < it.value.expiresAt) continue;
      try {
        if (await this.store.delete(it.key, { expectRevision: it.modRevision })) n++;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
    return n;
  }
}
