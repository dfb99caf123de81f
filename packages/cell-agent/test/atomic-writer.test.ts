// The kubelet-style atomic volume writer: layout, no-op on unchanged payloads, removal of keys
// that went away, migration from the old plain-file layout, and the property that matters — a
// reader in another process, looking through a bind mount as a container does, never sees a
// torn file while versions are swapped under it.
import { spawn, execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkPayloadPath, writeAtomic } from '../src/pod/atomic-writer.js';

const root = mkdtempSync(join(tmpdir(), 'atomic-writer-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const file = (path: string, data: string, mode = 0o644) => ({ path, data: Buffer.from(data), mode });

describe('writeAtomic', () => {
  it('writes a version dir, the ..data link and one link per top-level name; skips unchanged payloads', () => {
    const dir = join(root, 'layout');
    expect(writeAtomic(dir, [file('token', 't1', 0o600), file('nested/ca.crt', 'ca')])).toBe(true);
    expect(readlinkSync(join(dir, 'token'))).toBe('..data/token');
    expect(readlinkSync(join(dir, 'nested'))).toBe('..data/nested');
    const v1 = readlinkSync(join(dir, '..data'));
    expect(v1).toMatch(/^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\w+$/);
    expect(statSync(join(dir, v1)).mode & 0o777).toBe(0o755);
    expect(readFileSync(join(dir, 'token'), 'utf8')).toBe('t1');
    expect(statSync(join(dir, 'token')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'nested', 'ca.crt'), 'utf8')).toBe('ca');
    // The same payload again: nothing written, same version.
    expect(writeAtomic(dir, [file('token', 't1', 0o600), file('nested/ca.crt', 'ca')])).toBe(false);
    expect(readlinkSync(join(dir, '..data'))).toBe(v1);
    // A changed mode is a change.
    expect(writeAtomic(dir, [file('token', 't1', 0o644), file('nested/ca.crt', 'ca')])).toBe(true);
    expect(readlinkSync(join(dir, '..data'))).not.toBe(v1);
  });

  it('a new payload replaces the old one: changed files, new names linked, names that went away removed, the old version deleted one write later', () => {
    const dir = join(root, 'replace');
    writeAtomic(dir, [file('a', 'a1'), file('b', 'b1')]);
    const v1 = readlinkSync(join(dir, '..data'));
    writeAtomic(dir, [file('a', 'a2'), file('c', 'c2')]);
    const v2 = readlinkSync(join(dir, '..data'));
    expect(readFileSync(join(dir, 'a'), 'utf8')).toBe('a2');
    expect(readFileSync(join(dir, 'c'), 'utf8')).toBe('c2');
    expect(() => lstatSync(join(dir, 'b'))).toThrow(/ENOENT/);
    // The replaced version stays for readers that resolved `..data` just before the swap.
    expect(readdirSync(dir).sort()).toEqual(['..data', v1, v2, 'a', 'c'].sort());
    writeAtomic(dir, [file('a', 'a3'), file('c', 'c3')]);
    expect(readdirSync(dir).sort()).toEqual(['..data', v2, readlinkSync(join(dir, '..data')), 'a', 'c'].sort());
    expect(readdirSync(dir)).not.toContain(v1);
  });

  it('migrates a volume an older agent wrote as plain files', () => {
    const dir = join(root, 'migrate');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    writeFileSync(join(dir, 'token'), 'old');
    writeFileSync(join(dir, 'sub', 'x'), 'old');
    writeFileSync(join(dir, 'gone'), 'old');
    writeAtomic(dir, [file('token', 'new'), file('sub/x', 'new')]);
    expect(readlinkSync(join(dir, 'token'))).toBe('..data/token');
    expect(readFileSync(join(dir, 'sub', 'x'), 'utf8')).toBe('new');
    expect(() => lstatSync(join(dir, 'gone'))).toThrow(/ENOENT/);
  });

  it('refuses paths that escape or that collide with its own names', () => {
    expect(checkPayloadPath('../x')).toMatch(/\.\./);
    expect(checkPayloadPath('/etc/x')).toMatch(/relative/);
    expect(checkPayloadPath('..data')).toMatch(/must not start with '\.\.'/);
    expect(checkPayloadPath('a/..b')).toBeUndefined();
    expect(() => writeAtomic(join(root, 'bad'), [file('..data', 'x')])).toThrow(/path "\.\.data" must not start with '\.\.'/);
  });

  it('a reader in another process, through a bind mount, never sees a torn or missing file while versions are swapped', async () => {
    const dir = join(root, 'race');
    const mnt = join(root, 'race-mnt');
    mkdirSync(mnt, { recursive: true });
    const size = 256 * 1024; // larger than one write(2) chunk of a pipe or page
    const payload = (v: number) => [file('data', String.fromCharCode(97 + (v % 26)).repeat(size)), file('version', String(v))];
    writeAtomic(dir, payload(0));
    // A container sees the volume through a bind mount of the volume directory.
    execFileSync('mount', ['--bind', dir, mnt]);
    // The reader ends itself once it has read enough across enough versions, so the test does not
    // depend on how many reads a loaded machine fits into a fixed time: the writer swaps until then.
    const reader = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); let reads = 0, torn = 0, missing = 0; const seen = new Set();
       const stop = Date.now() + 60000;
       (function loop() { for (let i = 0; i < 50; i++) { try { const b = fs.readFileSync(${JSON.stringify(join(mnt, 'data'))});
         if (b.length !== ${size} || b.some((c) => c !== b[0])) torn++; seen.add(b[0]); reads++; } catch { missing++; } }
         if ((reads < 500 || seen.size < 3) && Date.now() < stop) return setImmediate(loop);
         console.log(JSON.stringify({ reads, torn, missing, versions: seen.size })); })();`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    reader.stdout.on('data', (b: Buffer) => (out += b.toString()));
    let exited = false;
    const exit = new Promise((r) => reader.on('exit', () => r((exited = true))));
    let v = 0;
    try {
      while (!exited) {
        writeAtomic(dir, payload(++v));
        if (v % 10 === 0) await new Promise((r) => setTimeout(r, 5)); // let the reader run
      }
      await exit;
      expect(readFileSync(join(mnt, 'version'), 'utf8')).toBe(String(v));
    } finally {
      reader.kill();
      execFileSync('umount', [mnt]);
    }
    const r = JSON.parse(out) as { reads: number; torn: number; missing: number; versions: number };
    expect(r.reads).toBeGreaterThanOrEqual(500);
    expect(r.versions).toBeGreaterThanOrEqual(3); // it did read across swaps (else it gave up at its deadline)
    expect(r.torn).toBe(0);
    expect(r.missing).toBe(0);
  });
});
