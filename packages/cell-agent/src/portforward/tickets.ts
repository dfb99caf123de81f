// Single-use port-forward tokens (PortForwardTicket): issued over the authenticated gRPC API,
// redeemed once on the stream port within a short time. The token is the only thing that ties
// a stream connection to an authorised request, so it is long and random and good exactly once.
import { randomBytes } from 'node:crypto';
import { CelloError } from '@cello/proto';

/** Token length on the wire: the client sends exactly this many bytes first. 256 bits. */
export const TOKEN_BYTES = 32;
export const DEFAULT_TICKET_TTL_MS = 30_000;
/** Outstanding tickets kept at most; a client asking for more is refused (not a memory sink). */
const MAX_OUTSTANDING = 4096;

export interface Ticket {
  token: Buffer;
  port: number;
  expires: Date;
}

export type Redeemed = { ok: true; port: number } | { ok: false; reason: string };

export class TicketLimitError extends CelloError {
  constructor(message: string) {
    super('ResourceExhausted', message);
  }
}

interface Entry {
  port: number;
  expiresAt: number;
  used: boolean;
}

export class TicketBook {
  // Keyed by the token's hex. Spent and expired entries stay until a while after they expire,
  // so a reused or late token gets a precise answer instead of "unknown".
  private readonly entries = new Map<string, Entry>();
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(opts: { ttlMs?: number; now?: () => number } = {}) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_TICKET_TTL_MS;
    this.now = opts.now ?? Date.now;
  }

  issue(port: number): Ticket {
    this.sweep();
    if (this.entries.size >= MAX_OUTSTANDING) throw new TicketLimitError(`too many port-forward tickets outstanding (${MAX_OUTSTANDING}); try again shortly`);
    const token = randomBytes(TOKEN_BYTES);
    const expiresAt = this.now() + this.ttlMs;
    this.entries.set(token.toString('hex'), { port, expiresAt, used: false });
    return { token, port, expires: new Date(expiresAt) };
  }

  redeem(token: Buffer): Redeemed {
    const e = token.length === TOKEN_BYTES ? this.entries.get(token.toString('hex')) : undefined;
    if (e === undefined) return { ok: false, reason: 'unknown port-forward token' };
    if (e.used) return { ok: false, reason: 'port-forward token already used (a token is good for one connection)' };
    e.used = true;
    if (this.now() >= e.expiresAt)
      return { ok: false, reason: `port-forward token expired ${Math.round((this.now() - e.expiresAt) / 1000)} s ago (tokens are good for ${this.ttlMs / 1000} s)` };
    return { ok: true, port: e.port };
  }

  get size(): number {
    return this.entries.size;
  }

  private sweep(): void {
    const forgetBefore = this.now() - this.ttlMs;
    for (const [k, e] of this.entries) if (e.expiresAt < forgetBefore) this.entries.delete(k);
  }
}
