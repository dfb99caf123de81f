// Image platforms read from a real registry (CNCF distribution) through a relay that counts
// requests: an amd64-only image, an arm64-only image and a multi-arch index; the cache by digest
// and by tag; a registry outage and a missing image as clear errors.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { pushBusybox, startRegistry, startRequestLog, type RegistryServer, type RequestLog } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePlatformReader, ImagePlatformsUnknown, ImageUnreadable } from '../../src/selection/image-platforms.js';
import { createRegistryClientFactory } from '../../src/selection/registry-client.js';
import { pushPlatformImages, type PlatformImages } from './image-fixtures.js';

let registry: RegistryServer;
let relay: RequestLog;
let images: PlatformImages;

const reader = (over: Partial<ConstructorParameters<typeof ImagePlatformReader>[0]> = {}) =>
  new ImagePlatformReader({ clients: createRegistryClientFactory({ plainHttp: [relay.host] }), timeoutMs: 5000, ...over });
const archs = (p: { platforms: Array<{ architecture: string }> }) => p.platforms.map((x) => x.architecture);
const manifests = /\/manifests\//;
const blobs = /\/blobs\//;

beforeAll(async () => {
  registry = await startRegistry();
  relay = await startRequestLog(registry.url);
  images = await pushPlatformImages(registry, relay.host);
});

afterAll(async () => {
  await relay?.stop();
  await registry?.stop();
});

describe('ImagePlatformReader on a real registry', () => {
  it("reads a single manifest's architecture from its config, and an index's platforms (attestations left out)", async () => {
    const r = reader();
    try {
      const a = await r.platformsOf(images.amd64);
      expect(a).toEqual({ digest: images.digests.amd64, platforms: [{ os: 'linux', architecture: 'amd64' }] });
      expect(archs(await r.platformsOf(images.arm64))).toEqual(['arm64']);
      const m = await r.platformsOf(images.multi);
      expect(m.digest).toBe(images.digests.multi);
      expect(m.platforms).toEqual([
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ]);
    } finally {
      await r.close();
    }
  });

  it('caches by tag for tagTtlMs, then by digest: an expired tag costs one manifest GET and no config GET', async () => {
    const r = reader({ tagTtlMs: 60_000 });
    const r0 = reader({ tagTtlMs: 0 });
    try {
      const n0 = relay.requests.length;
      await r.platformsOf(images.amd64);
      const first = relay.requests.slice(n0);
      expect(first.filter((q) => manifests.test(q.path))).toHaveLength(1);
      expect(first.filter((q) => blobs.test(q.path))).toHaveLength(1); // the config
      const n1 = relay.requests.length;
      for (let i = 0; i < 5; i++) await r.platformsOf(images.amd64);
      expect(relay.requests.length).toBe(n1);
      // By digest: known, nothing asked.
      await r.platformsOf(`${relay.host}/arch/amd64-only@${images.digests.amd64}`);
      expect(relay.requests.length).toBe(n1);

      await r0.platformsOf(images.multi);
      const n2 = relay.requests.length;
      await r0.platformsOf(images.multi);
      await r0.platformsOf(images.amd64);
      await r0.platformsOf(images.amd64);
      const later = relay.requests.slice(n2);
      // The tag is looked up again each time (ttl 0), the content never.
      expect(later.filter((q) => manifests.test(q.path)).length).toBe(3);
      expect(later.filter((q) => blobs.test(q.path)).length).toBe(1); // amd64's config once, for r0
    } finally {
      await r.close();
      await r0.close();
    }
  });

  it('concurrent lookups of one image share one read', async () => {
    const r = reader();
    try {
      const n0 = relay.requests.length;
      const all = await Promise.all(Array.from({ length: 20 }, () => r.platformsOf(images.arm64)));
      expect(new Set(all.map((x) => x.digest)).size).toBe(1);
      expect(relay.requests.slice(n0).filter((q) => manifests.test(q.path))).toHaveLength(1);
    } finally {
      await r.close();
    }
  });

  it('reads at most `concurrency` images at once', async () => {
    const r = reader({ concurrency: 2 });
    try {
      relay.resetInFlight();
      const refs = [images.amd64, images.arm64, images.multi, `${relay.host}/arch/multi:amd64`, `${relay.host}/arch/multi:arm64`];
      const all = await Promise.all(refs.map((ref) => r.platformsOf(ref)));
      expect(all.map((p) => archs(p).join('+'))).toEqual(['amd64', 'arm64', 'amd64+arm64', 'amd64', 'arm64']);
      expect(relay.maxInFlight).toBeLessThanOrEqual(2);
    } finally {
      await r.close();
    }
  });

  it('a registry that answers 503: ImagePlatformsUnknown (scheduling waits); a missing image: ImageUnreadable (the cell pull reports it); each naming the image and the cause', async () => {
    const r = reader();
    try {
      relay.down = true;
      const down = await r.platformsOf(images.arm64).catch((e: unknown) => e);
      expect(down).toBeInstanceOf(ImagePlatformsUnknown);
      expect((down as Error).message).toMatch(new RegExp(`^reading the platforms of ${relay.host}/arch/arm64-only:1: .*HTTP 503`));
      relay.down = false;
      const missing = await r.platformsOf(`${relay.host}/arch/none:1`).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(ImageUnreadable);
      expect((missing as Error).message).toContain(`${relay.host}/arch/none: manifest 1 not found`);
      // Nothing was cached from the outage: the registry back, the answer comes.
      expect(archs(await r.platformsOf(images.arm64))).toEqual(['arm64']);
    } finally {
      relay.down = false;
      await r.close();
    }
  });

  it("a private registry (htpasswd): refused without the pod's credentials, read with them; one pod's answer is not another's", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cello-htpasswd-'));
    const hash = execFileSync('python3', ['-c', "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))"], { encoding: 'utf8' }).trim();
    writeFileSync(join(dir, 'htpasswd'), `puller:${hash}\n`);
    const priv = await startRegistry({ htpasswd: join(dir, 'htpasswd') });
    const r = new ImagePlatformReader({ clients: createRegistryClientFactory(), timeoutMs: 10_000 });
    try {
      await pushBusybox(priv, 'private/busybox:1', { creds: 'puller:s3cret' });
      const ref = `${priv.host}/private/busybox:1`;
      const creds = (registry: string) => (registry === priv.host ? { username: 'puller', password: 's3cret' } : undefined);
      expect(archs(await r.platformsOf(ref, creds))).toEqual(['amd64']);
      // The same tag without credentials is asked again (and refused), not answered from the cache.
      const anon = await r.platformsOf(ref).catch((e: unknown) => e);
      expect(anon).toBeInstanceOf(ImageUnreadable);
      expect((anon as Error).message).toBe(`reading the platforms of ${ref}: ${priv.host}: credentials required for private/busybox`);
      const wrong = await r.platformsOf(ref, () => ({ username: 'puller', password: 'nope' })).catch((e: unknown) => e);
      expect(wrong).toBeInstanceOf(ImageUnreadable);
      expect((wrong as Error).message).toBe(`reading the platforms of ${ref}: ${priv.host}: unauthorized for private/busybox`);
    } finally {
      await r.close();
      await priv.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a registry that never answers fails within the lookup deadline', async () => {
    const sockets: Socket[] = [];
    const silent = createServer((s) => void sockets.push(s));
    await new Promise<void>((res) => silent.listen(0, '127.0.0.1', res));
    const host = `127.0.0.1:${(silent.address() as { port: number }).port}`;
    const r = new ImagePlatformReader({ clients: createRegistryClientFactory({ plainHttp: [host] }), timeoutMs: 500 });
    try {
      const t0 = Date.now();
      const err = await r.platformsOf(`${host}/x/y:1`).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImagePlatformsUnknown);
      expect((err as Error).message).toBe(`reading the platforms of ${host}/x/y:1: no answer within 0.5 s`);
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      await r.close();
      for (const s of sockets) s.destroy();
      await new Promise((res) => silent.close(res));
    }
  });
});
