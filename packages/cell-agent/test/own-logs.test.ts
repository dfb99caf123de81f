// The agent's own log kept in memory: lines split and counted, the oldest dropped past the byte
// bound, followers called with each new line until they stop, and stderr still written.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OwnLogs } from '../src/own-logs.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-own-logs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('OwnLogs', () => {
  it('keeps whole lines, the newest within its bound, and tails by lines', () => {
    const own = new OwnLogs(100);
    own.push('{"n":1}\n{"n":2}\n');
    for (let i = 3; i <= 30; i++) own.push(`{"n":${i}}\n`);
    const all = own.tail(0);
    expect(all.join('').length).toBeLessThanOrEqual(100);
    expect(all.at(-1)).toBe('{"n":30}\n');
    expect(all[0]).not.toBe('{"n":1}\n');
    expect(own.tail(2)).toEqual(['{"n":29}\n', '{"n":30}\n']);
  });

  it('calls followers with each new line until they stop', () => {
    const own = new OwnLogs();
    const seen: string[] = [];
    const stop = own.follow((l) => seen.push(l));
    own.push('a\nb\n');
    stop();
    own.push('c\n');
    expect(seen).toEqual(['a\n', 'b\n']);
  });

  it('tee() writes each line to its file descriptor and keeps it', async () => {
    const own = new OwnLogs();
    const file = join(dir, 'stderr');
    const fd = openSync(file, 'w');
    const w = own.tee(fd);
    await new Promise<void>((r) => w.write('{"msg":"x"}\n', () => r()));
    closeSync(fd);
    expect(readFileSync(file, 'utf8')).toBe('{"msg":"x"}\n');
    expect(own.tail(1)).toEqual(['{"msg":"x"}\n']);
  });
});
