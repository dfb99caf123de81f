import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOOTSTRAP_TOKEN_PREFIX, BootstrapTokenError, BootstrapTokens } from '../../src/security/index.js';
import { EmbeddedStore } from '../../src/store/index.js';

describe('bootstrap tokens', () => {
  let dir: string;
  let store: EmbeddedStore;
  let clock = Date.now();
  let tokens: BootstrapTokens;
  beforeAll(async () => {
    dir = await fs.mkdtemp(join(tmpdir(), 'cello-tokens-'));
    store = await EmbeddedStore.open({ dir });
    tokens = new BootstrapTokens(store, { now: () => clock });
  });
  afterAll(async () => {
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const refusal = (p: Promise<unknown>): Promise<string> =>
    p.then(
      () => 'accepted',
      (e: unknown) => (e instanceof BootstrapTokenError ? e.reason : `other: ${String(e)}`),
    );

  it('accepts a token once; a replay is refused', async () => {
    const { token, expiresAt } = await tokens.issueBootstrapToken('cell-1', 600);
    expect(token).toMatch(/^cbt_[A-Za-z0-9_-]{43}$/);
    expect(expiresAt.getTime()).toBe(clock + 600_000);
    await tokens.consumeBootstrapToken('cell-1', token);
    expect(await refusal(tokens.consumeBootstrapToken('cell-1', token))).toBe('unknown');
  });

  it('verifies without consuming: a resuming controller checks the token, then it is still good once', async () => {
    const { token } = await tokens.issueBootstrapToken('cell-v', 60);
    await tokens.verifyBootstrapToken('cell-v', token);
    await tokens.verifyBootstrapToken('cell-v', token);
    expect(await refusal(tokens.verifyBootstrapToken('cell-v', `${token}x`))).toBe('mismatch');
    const saved = clock;
    clock += 61_000;
    expect(await refusal(tokens.verifyBootstrapToken('cell-v', token))).toBe('expired');
    clock = saved;
    await tokens.consumeBootstrapToken('cell-v', token);
    expect(await refusal(tokens.verifyBootstrapToken('cell-v', token))).toBe('unknown');
  });

  it('stores only a hash of the token', async () => {
    const { token } = await tokens.issueBootstrapToken('cell-2', 600);
    const rec = await store.get(`${BOOTSTRAP_TOKEN_PREFIX}cell-2`);
    expect(JSON.stringify(rec)).not.toContain(token.slice(4));
    const wal = await fs.readFile(join(dir, 'wal.log'), 'latin1');
    expect(wal).not.toContain(token.slice(4));
  });

  it("refuses a wrong token or another cell's token without burning the real one", async () => {
    const { token } = await tokens.issueBootstrapToken('cell-3', 600);
    const other = await tokens.issueBootstrapToken('cell-4', 600);
    const wrong = token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A');
    expect(await refusal(tokens.consumeBootstrapToken('cell-3', wrong))).toBe('mismatch');
    expect(await refusal(tokens.consumeBootstrapToken('cell-3', other.token))).toBe('mismatch');
    expect(await refusal(tokens.consumeBootstrapToken('cell-3', ''))).toBe('mismatch');
    expect(await refusal(tokens.consumeBootstrapToken('cell-3', token))).toBe('accepted');
    expect(await refusal(tokens.consumeBootstrapToken('cell-4', other.token))).toBe('accepted');
  });

  it('refuses an expired token', async () => {
    const { token } = await tokens.issueBootstrapToken('cell-5', 30);
    clock += 30_000;
    const err = await tokens.consumeBootstrapToken('cell-5', token).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BootstrapTokenError);
    expect((err as BootstrapTokenError).reason).toBe('expired');
    expect(String(err)).not.toContain(token);
    expect(await refusal(tokens.consumeBootstrapToken('cell-5', token))).toBe('unknown');
  });

  it('a re-issued token replaces the previous one', async () => {
    const first = await tokens.issueBootstrapToken('cell-6', 600);
    const second = await tokens.issueBootstrapToken('cell-6', 600);
    expect(await refusal(tokens.consumeBootstrapToken('cell-6', first.token))).toBe('mismatch');
    expect(await refusal(tokens.consumeBootstrapToken('cell-6', second.token))).toBe('accepted');
  });

  it('of concurrent presenters of the same token exactly one wins', async () => {
    const { token } = await tokens.issueBootstrapToken('cell-7', 600);
    const results = await Promise.all(Array.from({ length: 8 }, () => refusal(tokens.consumeBootstrapToken('cell-7', token))));
    expect(results.filter((r) => r === 'accepted')).toHaveLength(1);
    expect(results.filter((r) => r !== 'accepted').every((r) => r === 'used' || r === 'unknown')).toBe(true);
  });

  it('sweeps expired tokens and validates its input', async () => {
    await tokens.issueBootstrapToken('cell-8', 10);
    await tokens.issueBootstrapToken('cell-9', 1000);
    clock += 11_000;
    expect(await tokens.sweepExpired()).toBeGreaterThanOrEqual(1);
    expect(await store.get(`${BOOTSTRAP_TOKEN_PREFIX}cell-8`)).toBeUndefined();
    expect(await store.get(`${BOOTSTRAP_TOKEN_PREFIX}cell-9`)).toBeDefined();
    await expect(tokens.issueBootstrapToken('cell-x', 0)).rejects.toThrow(/ttlSeconds must be/);
    await expect(tokens.issueBootstrapToken('../etc', 10)).rejects.toThrow(/cellId must be/);
  });
});
