import { describe, expect, it } from 'vitest';
import type pino from 'pino';
import { createLogger } from '../src/log.js';

describe('agent logger', () => {
  it('redacts secret fields at any of the first three levels and keeps the rest', () => {
    const lines: string[] = [];
    const log = createLogger({ destination: { write: (s: string) => void lines.push(s) } as pino.DestinationStream });
    log.info(
      { identityToken: 'i0', pull: { registryCredentials: { a: 1 }, image: 'busybox' }, req: { headers: { authorization: 'Bearer x' } }, cfg: { tls: { keyPem: 'k1' } } },
      'line',
    );
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({
      identityToken: '[redacted]',
      pull: { registryCredentials: '[redacted]', image: 'busybox' },
      req: { headers: { authorization: '[redacted]' } },
      cfg: { tls: { keyPem: '[redacted]' } },
    });
    expect(JSON.stringify(line)).not.toMatch(/i0|k1|Bearer x/);
  });
});
