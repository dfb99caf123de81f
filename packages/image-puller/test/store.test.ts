import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Store } from '../src/store.js';

const work = mkdtempSync(join(tmpdir(), 'ip-store-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The PID of a process that has exited. */
function deadPid(): number {
  const r = spawnSync('sh', ['-c', 'echo $$']);
  return Number(r.stdout.toString().trim());
}

describe('Store locks', () => {
  it("a lock appears with its holder's PID in it, and is gone after", async () => {
    const store = new Store(join(work, 'a'));
    let inside = '';
    await store.withLock('blob-x', async () => {
      inside = readFileSync(join(store.locks, 'blob-x'), 'utf8');
    });
    expect(inside).toBe(`${process.pid}\n`);
    expect(readdirSync(store.locks)).toEqual([]);
    expect(readdirSync(store.tmp)).toEqual([]);
  });

  it('breaks a lock whose holder is dead, and only that one', async () => {
    const store = new Store(join(work, 'b'));
    const file = join(store.locks, 'blob-y');
    writeFileSync(file, `${deadPid()}\n`);
    let ran = false;
    await store.withLock(
      'blob-y',
      async () => {
        ran = true;
      },
      5_000,
    );
    expect(ran).toBe(true);
    // A waiter that found holder D dead, but meanwhile another waiter broke D's lock and took
    // it: the live lock must survive the late break.
    const dead = deadPid();
    writeFileSync(file, `${process.pid}\n`);
    (store as unknown as { breakStale(f: string, pid: number): void }).breakStale(file, dead);
    expect(readFileSync(file, 'utf8')).toBe(`${process.pid}\n`);
    expect(readdirSync(store.tmp)).toEqual([]);
  });
});
