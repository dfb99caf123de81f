import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pushFixtures, pushImage, startRegistry, waitExit, waitFor, type PushedFixtures, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePuller, type PullError } from '../src/index.js';
import { checkManifestType } from '../src/image.js';
import { FaultProxy } from './helpers/proxy.js';
import { gzipLayer, makeTar } from './helpers/tar.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let registry: RegistryServer;
let proxy: FaultProxy;
let pushed: PushedFixtures;
let work: string;
let n = 0;

const viaProxy = (ref: string): string => ref.replace(registry.host, proxy.host);
const newPuller = (extra: Partial<ConstructorParameters<typeof ImagePuller>[0]> = {}): ImagePuller =>
  new ImagePuller({ root: join(work, `cache-${n++}`), plainHttp: [registry.host, proxy.host], transport: { backoffMs: 10 }, ...extra });

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ip-pull-'));
  registry = await startRegistry();
  pushed = await pushFixtures(registry, { debian: false });
  proxy = new FaultProxy({ host: '127.0.0.1', port: registry.port });
  await proxy.start();
});

afterAll(async () => {
  await proxy?.stop();
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('manifests and platforms', () => {
  it('selects the platform from an index (default: this host; settable with variant)', async () => {
    const host = await newPuller().pull(pushed.busyboxMulti);
    expect(host.architecture).toBe('amd64');
    const arm = await newPuller({ platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }).pull(pushed.busyboxMulti);
    expect(arm.architecture).toBe('arm64');
    expect(readFileSync(join(arm.layerDirs[0]!, 'etc/cello-arch'), 'utf8')).toBe('arm64\n');
    const arm2 = await newPuller({ platform: { os: 'linux', architecture: 'arm64' } }).pull(pushed.busyboxMulti);
    expect(arm2.digest).toBe(arm.digest);
    const err = await newPuller({ platform: { os: 'linux', architecture: 's390x' } })
      .pull(pushed.busyboxMulti)
      .catch((e: unknown) => e);
    expect((err as PullError).kind).toBe('not-found');
    expect((err as PullError).message).toMatch(/no manifest for platform linux\/s390x \(available: linux\/amd64, linux\/arm64\/v8\)/);
  });

  it('pulls by digest and by tag+digest, and verifies the manifest digest', async () => {
    const byTag = await newPuller().pull(pushed.busybox);
    const repo = pushed.busybox.replace(/:latest$/, '');
    const byDigest = await newPuller().pull(`${repo}@${byTag.digest}`);
    expect(byDigest.digest).toBe(byTag.digest);
    expect(byDigest.reference).toBe(`${repo}@${byTag.digest}`);
    expect((await newPuller().pull(`${pushed.busybox}@${byTag.digest}`)).digest).toBe(byTag.digest);

    proxy.inject({ match: new RegExp(`/manifests/${byTag.digest}$`), corruptAt: 10 });
    const err = await newPuller()
      .pull(viaProxy(`${repo}@${byTag.digest}`))
      .catch((e: unknown) => e);
    proxy.inject();
    expect((err as PullError).kind).toBe('integrity');
    expect((err as PullError).message).toContain(byTag.digest);
  });

  it('Docker schema 1 is refused with a clear error; missing tags are not-found', async () => {
    expect(() => checkManifestType('application/vnd.docker.distribution.manifest.v1+prettyjws', 'x')).toThrow(/schema 1 manifest, which is not supported/);
    const err = await newPuller()
      .pull(`${registry.host}/busybox:nope`)
      .catch((e: unknown) => e);
    expect((err as PullError).kind).toBe('not-found');
  });
});

describe('cache', () => {
  it('concurrent pulls (one puller and another on the same cache) fetch each layer once', async () => {
    proxy.seen.length = 0;
    const root = join(work, 'shared-cache');
    const a = new ImagePuller({ root, plainHttp: [proxy.host] });
    const b = new ImagePuller({ root, plainHttp: [proxy.host] });
    const ref = viaProxy(pushed.busybox);
    const progress: { done: number; total: number }[] = [];
    const results = await Promise.all([a.pull(ref, { onProgress: (p) => progress.push(p) }), a.pull(ref), b.pull(ref), b.pull(viaProxy(pushed.busyboxV2s2))]);
    for (const r of results) expect(r.layerDirs).toEqual(results[0]!.layerDirs);
    const layer = (await a.inspect(ref)).layers[0]!.digest;
    expect(proxy.seen.filter((r) => r.path.endsWith(`/blobs/${layer}`) && r.method === 'GET')).toHaveLength(1);
    const last = progress[progress.length - 1]!;
    expect(last.done).toBe(last.total);
  });

  it('cached() answers without the network; a missing layer makes it undefined; re-pull repairs', async () => {
    const p = newPuller();
    expect(await p.cached(pushed.busybox)).toBeUndefined();
    const img = await p.pull(pushed.busybox);
    expect(await p.cached(pushed.busybox)).toEqual(img);
    const repo = pushed.busybox.replace(/:latest$/, '');
    expect((await p.cached(`${repo}@${img.digest}`))?.digest).toBe(img.digest);
    renameSync(img.layerDirs[0]!, `${img.layerDirs[0]}.gone`);
    expect(await p.cached(pushed.busybox)).toBeUndefined();
    const again = await p.pull(pushed.busybox);
    expect(again.layerDirs).toEqual(img.layerDirs);
    expect(existsSync(join(again.layerDirs[0]!, 'bin/busybox'))).toBe(true);
  });

  it('gc keeps what kept images use and removes the rest', async () => {
    const p = newPuller();
    const { ref: other } = await pushImage(registry, 'gc/other:1', [
      gzipLayer(
        await makeTar([
          { name: 'etc/', type: 'directory' },
          { name: 'etc/other', content: 'x'.repeat(10000) },
        ]),
      ),
    ]);
    const bb = await p.pull(pushed.busybox);
    const o = await p.pull(other);
    const kept = await p.gc([pushed.busybox]);
    expect(kept.removedBytes).toBeGreaterThan(10000);
    expect(existsSync(o.layerDirs[0]!)).toBe(false);
    expect(await p.cached(other)).toBeUndefined();
    expect(await p.cached(pushed.busybox)).toEqual(bb);
    const flat = join(work, 'gc-flat');
    await p.unpackRootfs(bb, flat); // its blobs were kept
    expect(existsSync(join(flat, 'bin/busybox'))).toBe(true);
    const all = await p.gc([]);
    expect(all.removedBytes).toBeGreaterThan(500_000);
    expect(await p.cached(pushed.busybox)).toBeUndefined();
  });

  it("overlay form: a hardlink to a lower layer's file copies it up with its mode, owner and extended attributes", async () => {
    const p = newPuller();
    const lower = gzipLayer(
      await makeTar([
        { name: 'opt/', type: 'directory' },
        { name: 'opt/tool', content: 'bin', mode: 0o4750, uid: 7, gid: 8, pax: { 'SCHILY.xattr.user.origin': 'lower' } },
      ]),
    );
    const upper = gzipLayer(await makeTar([{ name: 'opt/tool-link', type: 'link', linkname: 'opt/tool' }]));
    const { ref } = await pushImage(registry, 'copyup/xattr:1', [lower, upper]);
    const img = await p.pull(ref);
    const up = join(img.layerDirs[1]!, 'opt/tool');
    const st = statSync(up);
    expect([st.mode & 0o7777, st.uid, st.gid, st.nlink]).toEqual([0o4750, 7, 8, 2]);
    expect(statSync(join(img.layerDirs[1]!, 'opt/tool-link')).ino).toBe(st.ino);
    expect(execFileSync('getfattr', ['--only-values', '-n', 'user.origin', up]).toString()).toBe('lower');
  });

  it("owners and modes are the headers' exactly: root files under a setgid directory, modes the umask would cut, setuid", async () => {
    // Root-owned files skip the chown (creating them as root already gives 0:0) unless a setgid
    // directory would hand its group down; modes skip the chmod only when open(2) set them whole.
    const p = newPuller();
    const base = gzipLayer(
      await makeTar([
        { name: 'srv/', type: 'directory', mode: 0o2775, gid: 50 },
        { name: 'srv/old', content: 'a' },
      ]),
    );
    const top = gzipLayer(
      await makeTar([
        { name: 'srv/new', content: 'b' },
        { name: 'srv/sub/', type: 'directory' },
        { name: 'srv/sub/deeper', content: 'c' },
        { name: 'srv/link', type: 'symlink', linkname: 'new' },
        { name: 'opt/', type: 'directory' },
        { name: 'opt/group-writable', content: 'd', mode: 0o664 },
        { name: 'opt/setuid', content: 'e', mode: 0o4755 },
        { name: 'opt/theirs', content: 'f', mode: 0o640, uid: 7, gid: 8 },
      ]),
    );
    const { ref } = await pushImage(registry, 'owners/setgid:1', [base, top]);
    const old = process.umask(0o022);
    try {
      const dir = join(work, 'owners-rootfs');
      await p.pullToRootfs(ref, dir);
      const own = (rel: string) => {
        const st = lstatSync(join(dir, rel));
        return [st.mode & 0o7777, st.uid, st.gid];
      };
      expect(own('srv')).toEqual([0o2775, 0, 50]);
      expect(own('srv/old')).toEqual([0o644, 0, 0]);
      expect(own('srv/new')).toEqual([0o644, 0, 0]);
      expect(own('srv/sub')).toEqual([0o755, 0, 0]);
      expect(own('srv/sub/deeper')).toEqual([0o644, 0, 0]);
      expect(own('srv/link').slice(1)).toEqual([0, 0]);
      expect(own('opt/group-writable')).toEqual([0o664, 0, 0]);
      expect(own('opt/setuid')).toEqual([0o4755, 0, 0]);
      expect(own('opt/theirs')).toEqual([0o640, 7, 8]);
      // An empty target directory that is itself setgid passes its group on just the same.
      const sg = join(work, 'owners-setgid-target');
      mkdirSync(sg);
      chownSync(sg, 0, 50);
      chmodSync(sg, 0o2775);
      await p.pullToRootfs(ref, sg);
      const st = lstatSync(join(sg, 'srv/old')); // (the bottom layer: no setgid directory of its own yet)
      expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o644, 0, 0]);
    } finally {
      process.umask(old);
    }
  });

  it('rootfs: a later layer is verified like the first: bad DiffID, corrupt blob, unsafe entry; nothing left in tmp', async () => {
    const big = randomBytes(1_500_000); // incompressible: a transfer long enough to corrupt midway
    const base = gzipLayer(
      await makeTar([
        { name: 'etc/', type: 'directory' },
        { name: 'etc/base', content: 'base\n' },
      ]),
    );
    const good = gzipLayer(
      await makeTar([
        { name: 'opt/', type: 'directory' },
        { name: 'opt/big', content: big },
      ]),
    );
    const out = (name: string) => join(work, `later-${name}`);
    const { ref } = await pushImage(registry, 'later/ok:1', [base, good]);
    const p = newPuller();
    await p.pullToRootfs(ref, out('ok'));
    expect(readFileSync(join(out('ok'), 'opt/big')).equals(big)).toBe(true);
    expect(readFileSync(join(out('ok'), 'etc/base'), 'utf8')).toBe('base\n');
    const tmp = join((p as unknown as { opts: { root: string } }).opts.root, 'tmp');
    expect(readdirSync(tmp)).toEqual([]);

    const { ref: badDiff } = await pushImage(registry, 'later/diffid:1', [base, { ...good, diffId: `sha256:${'0'.repeat(64)}` }]);
    await expect(newPuller().pullToRootfs(badDiff, out('diffid'))).rejects.toMatchObject({ kind: 'integrity', message: expect.stringContaining('DiffID') });

    const goodDigest = `sha256:${createHash('sha256').update(good.blob).digest('hex')}`;
    proxy.inject({ match: new RegExp(`/blobs/${goodDigest}$`), corruptAt: 700_000 });
    try {
      const q = newPuller();
      await expect(q.pullToRootfs(viaProxy(ref), out('corrupt'))).rejects.toMatchObject({ kind: 'integrity' });
      const root = (q as unknown as { opts: { root: string } }).opts.root;
      expect(existsSync(join(root, 'blobs', 'sha256', goodDigest.slice(7)))).toBe(false);
      expect(readdirSync(join(root, 'tmp'))).toEqual([]);
    } finally {
      proxy.inject();
    }

    const hostile = gzipLayer(
      await makeTar([
        { name: 'opt/', type: 'directory' },
        { name: 'opt/big', content: big },
        { name: '../escape', content: 'x' },
      ]),
    );
    const { ref: bad } = await pushImage(registry, 'later/hostile:1', [base, hostile]);
    await expect(newPuller().pullToRootfs(bad, out('hostile'))).rejects.toMatchObject({ kind: 'unsafe-content' });
    expect(existsSync(join(work, 'escape'))).toBe(false);
  });

  it('gc in one process keeps what a pull in another process is using (leases)', async () => {
    const root = join(work, `cache-${n++}`);
    const p = newPuller({ root });
    const base = gzipLayer(
      await makeTar([
        { name: 'etc/', type: 'directory' },
        { name: 'etc/base', content: 'b'.repeat(10000) },
      ]),
    );
    const top = gzipLayer(await makeTar([{ name: 'etc/top', content: 'top\n' }]));
    const topDigest = `sha256:${createHash('sha256').update(top.blob).digest('hex')}`;
    const { ref: first } = await pushImage(registry, 'lease/base:1', [base]);
    const { ref: second } = await pushImage(registry, 'lease/app:1', [base, top]);
    const baseDir = (await p.pull(first)).layerDirs[0]!; // cached, and kept by no one
    let release!: () => void;
    proxy.inject({ match: new RegExp(topDigest), hold: new Promise<void>((r) => (release = r)) });
    const child = spawn(process.execPath, [CLI, 'pull', viaProxy(second), '--plain-http', '--cache', root, '--layers', join(work, 'lease-out'), '--json'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    try {
      // The other process has resolved the image (its lease is written) and waits for the top layer.
      await waitFor(
        'the other pull to hold a lease and wait for its top layer',
        () => readdirSync(join(root, 'leases')).length > 0 && proxy.seen.some((r) => r.path.includes(topDigest)),
        { timeoutMs: 20_000 },
      );
      await p.gc([]);
      expect(existsSync(baseDir)).toBe(true);
    } finally {
      release();
    }
    const { code } = await waitExit(child, { timeoutMs: 30_000 });
    expect(code).toBe(0);
    const res = JSON.parse(out) as { layerDirs: string[] };
    expect(res.layerDirs.every((d) => existsSync(d))).toBe(true);
    expect(readdirSync(join(root, 'leases'))).toEqual([]); // released at the end of the pull
    proxy.inject();
    await p.gc([]);
    expect(readdirSync(join(root, 'layers'))).toEqual([]); // without the lease, everything goes
  });
});
