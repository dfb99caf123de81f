import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PullError } from '../src/index.js';
import { TarParser, type TarHeader } from '../src/tar.js';

let work: string;
const longDir = `${'d'.repeat(60)}/${'e'.repeat(60)}`;
const longName = `${longDir}/${'f'.repeat(90)}.txt`; // > 100 bytes; fits ustar's prefix+name split too
const longTarget = `/${'t'.repeat(150)}/target`;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ip-tar-'));
  const src = join(work, 'src');
  mkdirSync(join(src, longDir), { recursive: true });
  writeFileSync(join(src, longName), 'long\n');
  symlinkSync(longTarget, join(src, 'link'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function parse(tar: Buffer, chunk = 777): Promise<{ headers: TarHeader[]; data: Map<string, string> }> {
  const headers: TarHeader[] = [];
  const data = new Map<string, string>();
  let cur = '';
  const p = new TarParser({
    entry: (h) => {
      headers.push(h);
      cur = h.name;
      data.set(cur, '');
    },
    data: (c) => data.set(cur, data.get(cur)! + c.toString()),
    end: () => undefined,
  });
  // Odd chunk sizes: headers and data straddle chunk boundaries.
  for (let i = 0; i < tar.length; i += chunk) await p.write(tar.subarray(i, i + chunk));
  p.finish();
  return { headers, data };
}

describe('TarParser', () => {
  it.each(['gnu', 'pax', 'ustar'])('reads GNU tar --format=%s: long names and link targets, big ids', async (format) => {
    const args = ['--numeric-owner', '-C', join(work, 'src'), '-cf', '-', '.'];
    if (format !== 'ustar') args.unshift('--owner=3000000', '--group=3000001');
    if (format === 'ustar') {
      // ustar cannot hold a 150-byte link target: GNU tar refuses; check the name split instead.
      rmSync(join(work, 'src', 'link'), { force: true });
    }
    const tar = execFileSync('tar', [`--format=${format}`, ...args], { maxBuffer: 1 << 24 });
    const { headers, data } = await parse(tar);
    const file = headers.find((h) => h.name.endsWith('.txt'))!;
    expect(file.name).toBe(`./${longName}`);
    expect(data.get(file.name)).toBe('long\n');
    if (format !== 'ustar') {
      expect(file.uid).toBe(3000000);
      expect(file.gid).toBe(3000001);
      const link = headers.find((h) => h.type === 'symlink')!;
      expect(link.linkname).toBe(longTarget);
    }
    if (format === 'ustar') symlinkSync(longTarget, join(work, 'src', 'link'));
  });

  it('reads binary xattr values from PAX records', async () => {
    const f = join(work, 'xf');
    writeFileSync(f, 'x');
    execFileSync('setfattr', ['-n', 'user.bin', '-v', '0x00ff10', f]);
    const tar = execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=user.*', '-C', work, '-cf', '-', 'xf']);
    const { headers } = await parse(tar);
    expect(headers[0]!.xattrs?.get('user.bin')).toEqual(Buffer.from([0x00, 0xff, 0x10]));
  });

  it('a malformed URL-encoded LIBARCHIVE xattr name is an invalid-input error, not a crash', async () => {
    const { makeTar } = await import('./helpers/tar.js');
    const tar = await makeTar([{ name: 'f', content: 'x', pax: { 'LIBARCHIVE.xattr.user.%ZZ': 'eA==' } }]);
    const err = await parse(tar).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe('invalid');
    expect((err as PullError).message).toContain('"LIBARCHIVE.xattr.user.%ZZ" has a malformed URL-encoded xattr name');
  });

  it('rejects a corrupted header and a truncated archive', async () => {
    const tar = execFileSync('tar', ['--format=pax', '-C', join(work, 'src'), '-cf', '-', '.']);
    const bad = Buffer.from(tar);
    bad[5] = bad[5]! ^ 0x20;
    await expect(parse(bad)).rejects.toThrow(/checksum/);
    const err = await parse(tar.subarray(0, 512 * 5 + 100)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).message).toMatch(/truncated/);
    expect(readFileSync(join(work, 'src', longName), 'utf8')).toBe('long\n');
  });
});
