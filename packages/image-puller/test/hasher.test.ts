import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { OffThreadSha256 } from '../src/hasher.js';

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('OffThreadSha256', () => {
  it('gives the same digest as node:crypto for chunks of any size, across block boundaries', async () => {
    const data = randomBytes(5 * (1 << 20) + 12_345);
    for (const size of [1, 16_384, 1 << 20, (1 << 20) + 7, data.length]) {
      const h = new OffThreadSha256();
      // Odd-sized slices of one buffer: what TLS records and zlib output look like.
      const step = size === 1 ? 777_777 : size;
      for (let off = 0; off < data.length; off += step) {
        const w = h.update(data.subarray(off, Math.min(off + step, data.length)));
        if (w) await w;
      }
      expect(await h.digest()).toBe(sha(data));
    }
  });

  it('hashes empty input, and several streams at once without mixing them', async () => {
    expect(await new OffThreadSha256().digest()).toBe(sha(Buffer.alloc(0)));
    const a = randomBytes(3 << 20);
    const b = randomBytes(2 << 20);
    const ha = new OffThreadSha256();
    const hb = new OffThreadSha256();
    for (let off = 0; off < a.length; off += 100_000) {
      await ha.update(a.subarray(off, off + 100_000));
      await hb.update(b.subarray(off, off + 100_000));
    }
    const [da, db] = await Promise.all([ha.digest(), hb.digest()]);
    expect(da).toBe(sha(a));
    expect(db).toBe(sha(b));
  });

  it('copies what it is given: the caller may overwrite its buffer at once', async () => {
    const buf = Buffer.alloc(1 << 20, 1);
    const h = new OffThreadSha256();
    for (let i = 0; i < 40; i++) {
      const w = h.update(buf);
      buf.fill(i + 2); // a reused read buffer
      if (w) await w;
    }
    const expected = createHash('sha256');
    for (let i = 0; i < 40; i++) expected.update(Buffer.alloc(1 << 20, i === 0 ? 1 : i + 1));
    expect(await h.digest()).toBe(`sha256:${expected.digest('hex')}`);
  });

  it('a disposed hash is gone; a digest can be taken only once', async () => {
    const h = new OffThreadSha256();
    void h.update(randomBytes(3 << 20));
    h.dispose();
    await expect(h.digest()).rejects.toThrow(/after digest\(\) or dispose/);
    const g = new OffThreadSha256();
    await g.digest();
    await expect(g.digest()).rejects.toThrow(/after digest\(\) or dispose/);
  });
});
