import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pushImage, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePuller, PullError } from '../src/index.js';
import { gzipLayer, makeTar, sha256, type Entry } from './helpers/tar.js';

let registry: RegistryServer;
let work: string;
let outside: string;

beforeAll(async () => {
  registry = await startRegistry();
  work = mkdtempSync(join(tmpdir(), 'ip-hostile-'));
  outside = join(work, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'victim'), 'original\n');
});

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Every extended attribute of a path itself (not following a symlink), as name=value lines. */
function xattrsOf(path: string): string[] {
  const out = execFileSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', path], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
}

function outsideIntact(): void {
  expect(readdirSync(outside).sort()).toEqual(['victim']);
  expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('original\n');
  expect(xattrsOf(join(outside, 'victim'))).toEqual([]);
  expect(xattrsOf(outside)).toEqual([]);
}

async function expectRejected(
  name: string,
  layers: Entry[][],
  mention: string,
  kind = 'unsafe-content',
  limits: { maxImageBytes?: number; maxImageEntries?: number } = {},
): Promise<void> {
  const tars = await Promise.all(layers.map(makeTar));
  const { ref } = await pushImage(registry, `hostile/${name}:1`, tars.map(gzipLayer));
  for (const mode of ['layers', 'rootfs'] as const) {
    const root = join(work, `cache-${name}-${mode}`);
    const puller = new ImagePuller({ root, plainHttp: [registry.host], ...limits });
    let err: unknown;
    try {
      if (mode === 'layers') await puller.pull(ref);
      else await puller.pullToRootfs(ref, join(work, `rootfs-${name}`));
    } catch (e) {
      err = e;
    }
    await puller.close();
    expect(err, `${name} (${mode}) must fail`).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe(kind);
    expect((err as PullError).message).toContain(mention);
    outsideIntact();
    // Nothing half-unpacked is published, and the temp area is cleaned up.
    expect(readdirSync(join(root, 'layers')).length).toBeLessThan(layers.length);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
  }
}

describe('hostile layers are rejected with nothing written outside the root', () => {
  it('../ traversal', async () => {
    await expectRejected(
      'dotdot',
      [
        [
          { name: 'etc/', type: 'directory' },
          { name: '../../../../../../outside/evil', content: 'x' },
        ],
      ],
      '../../../../../../outside/evil',
    );
  });

  it('absolute paths', async () => {
    await expectRejected('absolute', [[{ name: `${outside}/evil`, content: 'x' }]], `${outside}/evil`);
  });

  it('a write through a symlink pointing outside', async () => {
    await expectRejected(
      'symlink-write',
      [
        [
          { name: 'link', type: 'symlink', linkname: outside },
          { name: 'link/evil', content: 'x' },
        ],
      ],
      'link/evil',
    );
  });

  it('a write through a symlink planted by an earlier layer', async () => {
    await expectRejected('symlink-lower', [[{ name: 'link', type: 'symlink', linkname: outside }], [{ name: 'link/victim', content: 'pwned' }]], 'link/victim');
  });

  it('a symlink chain escape', async () => {
    await expectRejected(
      'chain',
      [
        [
          { name: 'a', type: 'symlink', linkname: 'b' },
          { name: 'b', type: 'symlink', linkname: `../../../../../../../..${outside}` },
          { name: 'a/evil', content: 'x' },
        ],
      ],
      'a/evil',
    );
  });

  it('a hardlink to a file outside', async () => {
    await expectRejected('hardlink-abs', [[{ name: 'hl', type: 'link', linkname: `${outside}/victim` }]], 'hl');
    await expectRejected('hardlink-rel', [[{ name: 'hl', type: 'link', linkname: '../../../../../../../../../etc/passwd' }]], 'hl');
    await expectRejected(
      'hardlink-via-symlink',
      [
        [
          { name: 'link', type: 'symlink', linkname: outside },
          { name: 'hl', type: 'link', linkname: 'link/victim' },
        ],
      ],
      'hl',
    );
  });

  it('whiteouts naming .. or outside paths', async () => {
    await expectRejected('wh-dotdot', [[{ name: 'etc/', type: 'directory' }], [{ name: 'etc/.wh...', content: '' }]], 'etc/.wh...');
    await expectRejected('wh-outside', [[{ name: 'etc/', type: 'directory' }], [{ name: '../../../../../../outside/.wh.victim', content: '' }]], 'outside/.wh.victim');
    await expectRejected('wh-symlink', [[{ name: 'link', type: 'symlink', linkname: outside }], [{ name: 'link/.wh.victim', content: '' }]], 'link/.wh.victim');
  });

  it("extended attribute names that would inject into a dump, overlayfs' own, oversized values", async () => {
    // In a `setfattr --restore` dump this name ends the entry's block and starts one for the victim.
    const inject = `user.a\n\n# file: ${outside}/victim\nuser.pwned`;
    await expectRejected('xattr-newline', [[{ name: 'f', content: 'x', pax: { [`SCHILY.xattr.${inject}`]: 'v' } }]], 'extended attribute name');
    await expectRejected(
      'xattr-libarchive',
      [[{ name: 'f', content: 'x', pax: { [`LIBARCHIVE.xattr.${encodeURIComponent(inject)}`]: Buffer.from('v').toString('base64') } }]],
      'extended attribute name',
    );
    await expectRejected('xattr-nul', [[{ name: 'f', content: 'x', pax: { 'SCHILY.xattr.user.a\u0000b': 'v' } }]], 'extended attribute name');
    await expectRejected(
      'xattr-overlay',
      [
        [
          { name: 'd/', type: 'directory' },
          { name: 'd/', type: 'directory', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } },
        ],
      ],
      '"trusted.overlay.opaque" is overlayfs\' own',
    );
    await expectRejected('xattr-overlay-redirect', [[{ name: 'd/', type: 'directory', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } }]], '"trusted.overlay.redirect"');
    await expectRejected('xattr-big', [[{ name: 'f', content: 'x', pax: { 'SCHILY.xattr.user.big': 'v'.repeat(65537) } }]], 'over 65536');
    // What the kernel refuses (a malformed capability) names the entry, not the fd it was set through.
    await expectRejected('xattr-bad-cap', [[{ name: 'f', content: 'x', pax: { 'SCHILY.xattr.security.capability': 'junk' } }]], 'layer entry "f": Invalid argument', 'invalid');
    await expectRejected('xattr-long-name', [[{ name: 'f', content: 'x', pax: { [`SCHILY.xattr.user.${'n'.repeat(251)}`]: 'v' } }]], 'longer than 255 bytes');
  });

  it('sets the extended attributes an image may set on the exact inode, skipping what Linux cannot hold', async () => {
    // security.capability v2 (VFS_CAP_REVISION_2 | effective): cap_net_raw permitted.
    const cap = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, ...new Array<number>(12).fill(0)]);
    const tar = await makeTar([
      { name: 'bin/', type: 'directory', pax: { 'SCHILY.xattr.user.dir': 'd' } },
      {
        name: 'bin/ping',
        content: 'elf',
        mode: 0o755,
        pax: { 'SCHILY.xattr.security.capability': cap.toString('latin1'), 'SCHILY.xattr.user.k': 'v', 'SCHILY.xattr.system.posix_acl_access': 'junk' },
      },
      { name: 'bin/link', type: 'symlink', linkname: 'ping', pax: { 'SCHILY.xattr.trusted.sym': 's', 'SCHILY.xattr.user.cannot': 'x' } },
      { name: 'escape', type: 'symlink', linkname: `${outside}/victim`, pax: { 'SCHILY.xattr.trusted.on-link': '1' } },
    ]);
    // A later layer replaces the binary with one of another capability: the new file keeps its own.
    const cap2 = Buffer.from(cap);
    cap2[4] = 0x00;
    cap2[5] = 0x04; // cap_net_bind_service
    const replaced = await makeTar([{ name: 'bin/ping', content: 'elf2', mode: 0o755, pax: { 'SCHILY.xattr.security.capability': cap2.toString('latin1') } }]);
    const { ref } = await pushImage(registry, 'benign/xattrs:1', [gzipLayer(tar), gzipLayer(replaced)]);
    const puller = new ImagePuller({ root: join(work, 'cache-xattrs'), plainHttp: [registry.host] });
    const img = await puller.pull(ref);
    const dir = join(work, 'rootfs-xattrs');
    await puller.pullToRootfs(ref, dir);
    await puller.close();
    expect(xattrsOf(join(img.layerDirs[1]!, 'bin/ping'))).toEqual([`security.capability=0x${cap2.toString('hex')}`]);
    expect(xattrsOf(join(dir, 'bin/ping'))).toEqual([`security.capability=0x${cap2.toString('hex')}`]);
    expect(xattrsOf(join(img.layerDirs[0]!, 'bin/ping'))).toEqual([`security.capability=0x${cap.toString('hex')}`, 'user.k=0x76']);
    for (const root of [img.layerDirs[0]!, dir]) {
      expect(xattrsOf(join(root, 'bin'))).toEqual(['user.dir=0x64']);
      expect(xattrsOf(join(root, 'bin/link'))).toEqual(['trusted.sym=0x73']);
      expect(xattrsOf(join(root, 'escape'))).toEqual(['trusted.on-link=0x31']);
    }
    outsideIntact();
  });

  it('a hardlink copy-up resolves its target as overlayfs serves it: never through a symlink of a lower layer', async () => {
    // Layer 1's symlink x -> outside is hidden by layer 2's directory x; overlayfs serves x/victim
    // from layer 2 (where it is absent), never through layer 1's symlink.
    await expectRejected(
      'copyup-hidden-symlink',
      [[{ name: 'x', type: 'symlink', linkname: outside }], [{ name: 'x/', type: 'directory' }], [{ name: 'h', type: 'link', linkname: 'x/victim' }]],
      'hardlink target "x/victim"',
      'invalid',
    );
    await expectRejected('copyup-served-symlink', [[{ name: 'x', type: 'symlink', linkname: outside }], [{ name: 'h', type: 'link', linkname: 'x/victim' }]], 'layer entry "h"');
    // An opaque directory hides what lower layers had under it.
    await expectRejected(
      'copyup-opaque',
      [
        [
          { name: 'd/', type: 'directory' },
          { name: 'd/f', content: 'lower' },
        ],
        [
          { name: 'd/', type: 'directory' },
          { name: 'd/.wh..wh..opq', content: '' },
        ],
        [{ name: 'h', type: 'link', linkname: 'd/f' }],
      ],
      'hardlink target "d/f"',
      'invalid',
    );
  });

  it('an image over maxImageEntries or maxImageBytes, though each layer is within its own bound', async () => {
    const files = (layer: number, n: number, size = 1): Entry[] => Array.from({ length: n }, (_, i) => ({ name: `l${layer}-${i}`, content: Buffer.alloc(size, 1) }));
    await expectRejected('entries', [files(0, 30), files(1, 30)], 'limit of 50 files and directories (option maxImageEntries', 'unsafe-content', { maxImageEntries: 50 });
    await expectRejected('bytes', [files(0, 1, 3 << 20), files(1, 1, 3 << 20)], 'limit of 5242880 bytes (option maxImageBytes', 'unsafe-content', { maxImageBytes: 5 << 20 });
  });

  it('a decompression bomb, bounded by maxLayerBytes', async () => {
    const tar = await makeTar([{ name: 'zeros', content: Buffer.alloc(64 << 20) }]);
    const blob = gzipSync(tar, { level: 9 });
    expect(blob.length).toBeLessThan(1 << 20);
    const { ref } = await pushImage(registry, 'hostile/bomb:1', [{ blob, diffId: sha256(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }]);
    const root = join(work, 'cache-bomb');
    const puller = new ImagePuller({ root, plainHttp: [registry.host], maxLayerBytes: 16 << 20 });
    const err = await puller.pull(ref).catch((e: unknown) => e);
    await puller.close();
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe('unsafe-content');
    expect((err as PullError).message).toMatch(/limit of 16777216 bytes/);
    expect(readdirSync(join(root, 'layers'))).toEqual([]);
    expect(existsSync(join(root, 'tmp')) && readdirSync(join(root, 'tmp'))).toEqual([]);
  });

  it('creates device nodes and FIFOs as root, in both forms', async () => {
    const tar = await makeTar([
      { name: 'dev/', type: 'directory' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      { name: 'dev/loop9', type: 'block-device', devmajor: 7, devminor: 9, mode: 0o660, gid: 6 },
      { name: 'run-fifo', type: 'fifo', mode: 0o620, uid: 1000 },
    ]);
    const { ref } = await pushImage(registry, 'benign/devices:1', [gzipLayer(tar)]);
    const puller = new ImagePuller({ root: join(work, 'cache-devices'), plainHttp: [registry.host] });
    const img = await puller.pull(ref);
    const dir = join(work, 'rootfs-devices');
    await puller.pullToRootfs(ref, dir);
    await puller.close();
    for (const root of [img.layerDirs[0]!, dir]) {
      const nul = lstatSync(join(root, 'dev/null'));
      expect(nul.isCharacterDevice()).toBe(true);
      expect([nul.rdev >> 8, nul.rdev & 0xff, nul.mode & 0o7777]).toEqual([1, 3, 0o666]);
      const loop = lstatSync(join(root, 'dev/loop9'));
      expect(loop.isBlockDevice()).toBe(true);
      expect([loop.rdev >> 8, loop.rdev & 0xff, loop.gid]).toEqual([7, 9, 6]);
      const fifo = lstatSync(join(root, 'run-fifo'));
      expect(fifo.isFIFO()).toBe(true);
      expect([fifo.mode & 0o7777, fifo.uid]).toEqual([0o620, 1000]);
    }
    outsideIntact();
  });

  it('still accepts in-root symlinks, .. that stays inside, and a benign layer', async () => {
    const tar = await makeTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/a/../hosts', content: '127.0.0.1 localhost\n' },
      { name: 'etc/abs', type: 'symlink', linkname: '/etc/hosts' },
      { name: 'etc/up', type: 'symlink', linkname: '../../../../etc/hosts' },
    ]);
    const { ref } = await pushImage(registry, 'hostile/benign:1', [gzipLayer(tar)]);
    const puller = new ImagePuller({ root: join(work, 'cache-benign'), plainHttp: [registry.host] });
    const dir = join(work, 'rootfs-benign');
    await puller.pullToRootfs(ref, dir);
    await puller.close();
    expect(readFileSync(join(dir, 'etc', 'hosts'), 'utf8')).toBe('127.0.0.1 localhost\n');
    expect(readdirSync(join(dir, 'etc')).sort()).toEqual(['abs', 'hosts', 'up']);
    outsideIntact();
  });
});
