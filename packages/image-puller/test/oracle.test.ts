import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFixtures, pushFixtures, requireCommand, startRegistry, type Fixtures, type PushedFixtures, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePuller } from '../src/index.js';
import { diffTrees, snapshot, type Tree } from './helpers/tree.js';

let registry: RegistryServer;
let pushed: PushedFixtures;
let work: string;
let busybox: Fixtures;
let debian: Fixtures;
const oracles = new Map<string, Tree>();

function umociUnpack(layout: string, tag: string): Tree {
  const bundle = join(work, `umoci-${tag}`);
  execFileSync('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle], { stdio: ['ignore', 'ignore', 'pipe'] });
  const t = snapshot(join(bundle, 'rootfs'));
  rmSync(bundle, { recursive: true, force: true });
  return t;
}

beforeAll(async () => {
  requireCommand('umoci', 'umoci');
  requireCommand('skopeo', 'skopeo');
  work = mkdtempSync(join(tmpdir(), 'ip-oracle-'));
  [busybox, debian, registry] = await Promise.all([buildFixtures('busybox'), buildFixtures('debian'), startRegistry()]);
  pushed = await pushFixtures(registry);
  oracles.set('busybox', umociUnpack(busybox.layout, 'busybox'));
  oracles.set('debian', umociUnpack(debian.layout, 'debian-gzip'));
}, 600_000);

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('flattened rootfs equals umoci unpack', () => {
  it.each([
    ['busybox', 'busybox (OCI, gzip)'],
    ['busyboxV2s2', 'busybox (Docker schema 2)'],
    ['busyboxMulti', 'busybox (index, amd64 picked)'],
    ['debianGzip', 'debian 5 layers, gzip'],
    ['debianZstd', 'debian 5 layers, zstd'],
    ['debianPlain', 'debian 5 layers, uncompressed'],
  ] as const)(
    '%s: %s',
    async (key, _what) => {
      const ref = pushed[key]!;
      const oracle = oracles.get(key.startsWith('debian') ? 'debian' : 'busybox')!;
      const puller = new ImagePuller({ root: join(work, `cache-${key}`), plainHttp: [registry.host] });
      const dir = join(work, `rootfs-${key}`);
      await puller.pullToRootfs(ref, dir);
      await puller.close();
      expect(diffTrees(oracle, snapshot(dir))).toEqual([]);
      if (key.startsWith('debian')) {
        // A PAX xattr survives.
        expect(execFileSync('getfattr', ['--only-values', '-n', 'user.cello', join(dir, 'opt/app/xattr-file')]).toString()).toBe('fixture');
      }
      rmSync(dir, { recursive: true, force: true });
    },
    300_000,
  );
});

describe('overlay layers', () => {
  it('mounted with overlayfs, show the same tree as umoci; unpackRootfs too', async () => {
    const root = join(work, 'cache-overlay');
    const puller = new ImagePuller({ root, plainHttp: [registry.host] });
    const img = await puller.pull(pushed.debianGzip!);
    expect(img.layerDirs).toHaveLength(5);
    expect(img.config.entrypoint).toEqual(['/bin/bash', '-c']);
    expect(img.config.exposedPorts.sort()).toEqual(['8080/tcp', '9090/udp']);
    expect(img.config.volumes).toEqual(['/data']);
    expect(img.config.stopSignal).toBe('SIGINT');
    expect(img.config.workingDir).toBe('/opt/app');
    // Overlay form: a whiteout is a 0/0 character device, an opaque dir carries the xattr.
    const wh = lstatSync(join(img.layerDirs[3]!, 'etc/motd'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    expect(execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(img.layerDirs[3]!, 'etc/apt/apt.conf.d')]).toString()).toBe('y');

    const mnt = join(work, 'mnt');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${[...img.layerDirs].reverse().join(':')}`, mnt]);
    let merged: Tree;
    try {
      merged = snapshot(mnt);
    } finally {
      execFileSync('umount', [mnt]);
    }
    expect(diffTrees(oracles.get('debian')!, merged)).toEqual([]);

    const flat = join(work, 'flat');
    await puller.unpackRootfs(img, flat);
    expect(diffTrees(oracles.get('debian')!, snapshot(flat))).toEqual([]);
    rmSync(flat, { recursive: true, force: true });

    // The shared-layer tag reuses the four bottom layers and unpacks only its own.
    const { image: shared, stats } = await puller.pullWithStats(pushed.debianShared!);
    expect(shared.layerDirs.slice(0, 4)).toEqual(img.layerDirs.slice(0, 4));
    expect(shared.layerDirs[4]).not.toBe(img.layerDirs[4]);
    expect(stats.fetchedLayers).toBe(1);
    expect(stats.unpackedLayers).toBe(1);
    await puller.close();
  }, 300_000);
});
