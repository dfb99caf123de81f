import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/obs/logger.js';

function capture(): { stream: PassThrough; lines: () => Record<string, unknown>[] } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return {
    stream,
    lines: () =>
      Buffer.concat(chunks)
        .toString('utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('controller logger', () => {
  it('redacts secret fields at any of the first three levels and keeps the rest', async () => {
    const out = capture();
    const log = createLogger({ destination: out.stream });
    log.info({ token: 't0', cell: { keyPem: 'k1', id: 'c1' }, req: { headers: { authorization: 'Bearer x' } }, launch: { userData: 'u', password: 'p' } }, 'line');
    log.flush();
    await new Promise((r) => setTimeout(r, 50));
    const [line] = out.lines();
    expect(line).toMatchObject({
      token: '[redacted]',
      cell: { keyPem: '[redacted]', id: 'c1' },
      req: { headers: { authorization: '[redacted]' } },
      launch: { userData: '[redacted]', password: '[redacted]' },
    });
    expect(JSON.stringify(line)).not.toMatch(/t0|k1|Bearer x/);
  });
});
