// LineRing: a circular array of whole lines bounded in bytes; the oldest dropped past the bound
// (also across the wraparound and growth of the array), tails by lines, followers, stderr tee.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LineRing } from '../src/line-ring.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-line-ring-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const line = (i: number) => `${String(i).padStart(4, '0')}\n`; // 5 bytes each

describe('LineRing', () => {
  it('keeps the newest lines within its bound across many wraparounds', () => {
    const ring = new LineRing(50); // 10 lines of 5 bytes
    for (let i = 0; i < 1000; i++) ring.push(line(i));
    const kept = ring.tail(0);
    expect(kept).toEqual(Array.from({ length: 10 }, (_, k) => line(990 + k)));
    expect(ring.text()).toBe(kept.join(''));
    expect(ring.tail(3)).toEqual([line(997), line(998), line(999)]);
    expect(ring.tail(500)).toEqual(kept);
  });

  it('grows past its first capacity without losing order, then wraps after an eviction', () => {
    const ring = new LineRing(5 * 200);
    for (let i = 0; i < 150; i++) ring.push(line(i)); // past 64 and 128 slots: two growths
    expect(ring.tail(0)).toEqual(Array.from({ length: 150 }, (_, k) => line(k)));
    for (let i = 150; i < 260; i++) ring.push(line(i)); // evicts from 200 lines on: head moves, slots wrap
    const kept = ring.tail(0);
    expect(kept.length).toBe(200);
    expect(kept[0]).toBe(line(60));
    expect(kept.at(-1)).toBe(line(259));
  });

  it('splits pushed text into lines, keeps a lone line over the bound, and a partial last line', () => {
    const ring = new LineRing(4);
    ring.push('a\nb\n');
    expect(ring.tail(0)).toEqual(['a\n', 'b\n']);
    ring.push('a line longer than the bound\n');
    expect(ring.tail(0)).toEqual(['a line longer than the bound\n']);
    ring.push('x\ny');
    expect(ring.tail(2)).toEqual(['x\n', 'y']);
  });

  it('calls followers with each new line until they stop', () => {
    const ring = new LineRing(1024);
    const seen: string[] = [];
    const stop = ring.follow((l) => seen.push(l));
    ring.push('a\nb\n');
    stop();
    ring.push('c\n');
    expect(seen).toEqual(['a\n', 'b\n']);
    expect(ring.tail(0)).toEqual(['a\n', 'b\n', 'c\n']);
  });

  it('tee() writes each line to its file descriptor and keeps it', async () => {
    const ring = new LineRing(1024);
    const file = join(dir, 'stderr');
    const fd = openSync(file, 'w');
    const w = ring.tee(fd);
    await new Promise<void>((r) => w.write('{"msg":"x"}\n', () => r()));
    closeSync(fd);
    expect(readFileSync(file, 'utf8')).toBe('{"msg":"x"}\n');
    expect(ring.tail(1)).toEqual(['{"msg":"x"}\n']);
  });
});
