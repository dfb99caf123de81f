// A remote cell's bootstrap token: issued at launch (one per cell, hashed in the store when the
// controller has a token store), kept in the cell's record (sealed when it can be) only until
// the cell holds its certificate, presented by whichever controller finishes the bootstrap,
// then consumed; revoked when the cell ends.
import { randomBytes } from 'node:crypto';
import { GetInfoRequest, type AgentInfo } from '@cello/proto/cell';
import type { Cell } from '@cello/proto/controller';
import { cellKey, type CellRecord } from '../cells/schema.js';
import type { SealedSecrets } from '../security/secret-box.js';
import { BootstrapTokenError } from '../security/tokens.js';
import { errMsg } from '../util/errors.js';
import { callUnary } from '../agents/pool.js';
import type { ReconcileContext } from './context.js';

interface CellRecordWithToken extends CellRecord {
  /** Only when the controller has no token store or key (older records, tests). */
  bootstrapToken?: string;
  sealedBootstrapToken?: SealedSecrets;
}

export type BootstrapOutcome = 'done' | 'retry' | { failed: string; message: string };

export class CellBootstrap {
  constructor(private readonly ctx: ReconcileContext) {}

  /** A token for the cell's launch, valid for `ttlSeconds`. */
  async issue(id: string, ttlSeconds: number): Promise<{ token: string; expiresAt: Date }> {
    if (this.sealedTokens()) return this.ctx.o.tokens!.issueBootstrapToken(id, ttlSeconds);
    return { token: randomBytes(24).toString('base64url'), expiresAt: new Date(Date.now() + ttlSeconds * 1000) };
  }

  /**
   * Puts the token of the instance just launched in the cell's record (replacing an earlier
   * launch's): it proves the cell's identity once, and is kept only until the cell is
   * bootstrapped, so a restarted controller can present it again.
   */
  keep(r: CellRecord, id: string, token: string): void {
    const rec = r as CellRecordWithToken;
    delete rec.bootstrapToken;
    delete rec.sealedBootstrapToken;
    if (this.ctx.o.provider.needsBootstrap) {
      if (this.sealedTokens()) rec.sealedBootstrapToken = this.ctx.o.secretBox!.seal({ token }, cellKey(id));
      else rec.bootstrapToken = token;
    }
  }

  /** Bootstraps the cell at `address` if it still needs it (its record holds a token). */
  async run(id: string, cell: Cell, address: string): Promise<BootstrapOutcome> {
    const { o } = this.ctx;
    const rec = this.ctx.cache.cells.get(id)?.rec as CellRecordWithToken | undefined;
    const token = rec ? this.tokenOf(id, rec) : undefined;
    if (!o.provider.needsBootstrap || !token) return 'done';
    if (!o.bootstrap) return { failed: 'BootstrapUnavailable', message: 'provider needs bootstrap but none is configured' };
    return this.resume(id, cell, address, token);
  }

  /** The cell is going: its token can never be used. */
  async revoke(id: string): Promise<void> {
    if (this.ctx.o.tokens && this.ctx.o.provider.needsBootstrap) await this.ctx.o.tokens.revoke(id).catch(() => undefined);
  }

  private sealedTokens(): boolean {
    return this.ctx.o.tokens !== undefined && this.ctx.o.secretBox !== undefined;
  }

  /** The cell's bootstrap token, if its bootstrap is not finished (sealed, or plaintext from before). */
  private tokenOf(id: string, rec: CellRecordWithToken): string | undefined {
    if (rec.sealedBootstrapToken && this.ctx.o.secretBox) return String(this.ctx.o.secretBox.open(rec.sealedBootstrapToken, cellKey(id))['token']);
    return rec.bootstrapToken;
  }

  /**
   * Bootstraps a cell, or finishes the bootstrap an earlier controller began: if the agent already
   * answers mTLS as this cell (the other controller installed the certificate, then died), there
   * is nothing left to do; otherwise the token — still outstanding, not expired — is presented
   * again (the agent repeats its CSR for the same key until a certificate is installed).
   */
  private async resume(id: string, cell: Cell, address: string, token: string): Promise<BootstrapOutcome> {
    const { o, log } = this.ctx;
    const inherited = Date.parse(cell.createdAt?.toISOString() ?? '') < this.ctx.startedAt;
    let installed = false;
    if (inherited) {
      installed = await callUnary<AgentInfo>(o.agents.get(id, address), 'getInfo', GetInfoRequest.fromPartial({}), 2000).then(
        (info) => !info.cellId || info.cellId === id,
        () => false,
      );
      // A failed handshake leaves the channel backing off; start the next one afresh.
      if (!installed) o.agents.drop(id);
      else log.info({ cell: id }, 'cell was bootstrapped by an earlier controller; adopting it');
    }
    if (!installed) {
      if (this.sealedTokens()) {
        try {
          await o.tokens!.verifyBootstrapToken(id, token);
        } catch (err) {
          if (err instanceof BootstrapTokenError && err.reason !== 'used') {
            return { failed: err.reason === 'expired' ? 'BootstrapTokenExpired' : 'BootstrapTokenRevoked', message: err.message };
          }
          throw err;
        }
      }
      try {
        await o.bootstrap!({ address, token, cellId: id, caPem: (await o.caCertPem?.()) ?? '' });
      } catch (err) {
        log.debug({ cell: id, err: errMsg(err) }, 'bootstrap not yet possible');
        return 'retry';
      }
    }
    // The certificate is in place: the token is spent (of two controllers racing, one consumes it).
    if (this.sealedTokens()) {
      await o.tokens!.consumeBootstrapToken(id, token).catch((err: unknown) => {
        if (!(err instanceof BootstrapTokenError)) throw err;
      });
    }
    await this.ctx.cache.writeCell(id, (r) => {
      if (!r) return undefined;
      delete (r as CellRecordWithToken).bootstrapToken;
      delete (r as CellRecordWithToken).sealedBootstrapToken;
      return r;
    });
    return 'done';
  }
}
