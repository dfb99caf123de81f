import { describe, expect, it } from 'vitest';
import { Backoff, backoffDelay } from '../../src/util/backoff.js';

describe('back-off', () => {
  it('starts at the base and doubles', () => {
    const b = new Backoff({ baseMs: 200, maxMs: 10_000 });
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([200, 400, 800, 1600]);
    expect(b.attempts).toBe(4);
  });

  it('is capped, also after very many attempts', () => {
    const b = new Backoff({ baseMs: 100, maxMs: 2_000 });
    const seen = Array.from({ length: 8 }, () => b.next());
    expect(seen).toEqual([100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    expect(backoffDelay({ baseMs: 200, maxMs: 30_000 }, 5_000)).toBe(30_000);
    expect(backoffDelay({ baseMs: 200, maxMs: 30_000 }, 0)).toBe(200);
  });

  it('starts over at the base after reset()', () => {
    const b = new Backoff({ baseMs: 200, maxMs: 10_000 });
    b.next();
    b.next();
    b.reset();
    expect(b.attempts).toBe(0);
    expect(b.next()).toBe(200);
  });

  it('takes up to the jitter fraction off each delay, never more, never adding', () => {
    const policy = { baseMs: 1_000, maxMs: 8_000, jitter: 0.5 };
    expect(backoffDelay(policy, 1, () => 0)).toBe(1_000);
    expect(backoffDelay(policy, 1, () => 0.999999)).toBeCloseTo(500, 2);
    expect(backoffDelay(policy, 10, () => 0.5)).toBe(6_000);
    for (let i = 1; i <= 20; i++) {
      const d = backoffDelay(policy, i);
      const cap = Math.min(1_000 * 2 ** (i - 1), 8_000);
      expect(d).toBeGreaterThanOrEqual(cap / 2);
      expect(d).toBeLessThanOrEqual(cap);
    }
    // Full jitter can reach (almost) zero; without jitter there is no randomness.
    expect(backoffDelay({ ...policy, jitter: 1 }, 3, () => 0.999999)).toBeLessThan(1);
    expect(backoffDelay({ baseMs: 1_000, maxMs: 8_000 }, 3, () => 0.9)).toBe(4_000);
  });

  it('grows by another factor when asked', () => {
    expect([1, 2, 3].map((n) => backoffDelay({ baseMs: 10, maxMs: 1_000, factor: 3 }, n))).toEqual([10, 30, 90]);
  });
});
