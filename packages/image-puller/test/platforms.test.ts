// readImagePlatforms against a real registry (CNCF distribution): a single manifest's platform
// from its config, an index's linux platforms, and the hostile or odd cases as clear errors.
import { createHash } from 'node:crypto';
import { pushBlob, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TRANSPORT, DispatcherPool, parseReference, readImagePlatforms, RegistryClient, TokenCache } from '../src/index.js';

let registry: RegistryServer;
const PLAIN = { plainHttp: true, caPem: [], skipVerify: false };
const dispatchers = new DispatcherPool();
const dispatcher = dispatchers.get(PLAIN);
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function putManifest(repo: string, tag: string, mediaType: string, body: unknown): Promise<string> {
  const b = Buffer.from(JSON.stringify(body));
  const r = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType }, body: b, signal: AbortSignal.timeout(10_000) });
  if (r.status !== 201) throw new Error(`push ${repo}:${tag}: HTTP ${r.status} ${await r.text()}`);
  return digestOf(b);
}

async function image(repo: string, tag: string, config: Record<string, unknown>): Promise<{ digest: string; size: number }> {
  const layer = Buffer.from('layer');
  const layerDigest = await pushBlob(registry, repo, layer);
  const cfg = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [layerDigest] }, ...config }));
  const cfgDigest = await pushBlob(registry, repo, cfg);
  const m = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
  };
  const digest = await putManifest(repo, tag, m.mediaType, m);
  return { digest, size: Buffer.byteLength(JSON.stringify(m)) };
}

const read = (ref: string) => {
  const r = parseReference(ref.replace('REG', registry.host));
  const client = new RegistryClient({
    registry: r.registry,
    repository: r.repository,
    hostTransport: PLAIN,
    dispatcher,
    credentials: undefined,
    tokens: new TokenCache(),
    transport: { ...DEFAULT_TRANSPORT, attempts: 1 },
    logger: undefined,
    signal: AbortSignal.timeout(10_000),
  });
  return readImagePlatforms(client, r);
};

beforeAll(async () => {
  registry = await startRegistry();
});
afterAll(async () => {
  await dispatchers.close();
  await registry?.stop();
});

describe('readImagePlatforms', () => {
  it("a single manifest: its config's os, architecture and variant", async () => {
    const { digest } = await image('p/arm', '1', { os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(await read('REG/p/arm:1')).toEqual({ digest, platforms: [{ os: 'linux', architecture: 'arm', variant: 'v7' }] });
    // By digest: the same, and the digest is checked.
    expect((await read(`REG/p/arm@${digest}`)).digest).toBe(digest);
  });

  it('an index: its linux platforms, without attestations or other operating systems', async () => {
    const a = await image('p/multi', 'a', { os: 'linux', architecture: 'amd64' });
    const d = (p: Record<string, string>) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: a.digest, size: a.size, platform: p });
    const digest = await putManifest('p/multi', '1', 'application/vnd.oci.image.index.v1+json', {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        d({ os: 'linux', architecture: 'amd64' }),
        d({ os: 'windows', architecture: 'amd64' }),
        d({ os: 'unknown', architecture: 'unknown' }),
        d({ os: 'linux', architecture: 's390x' }),
      ],
    });
    expect(await read('REG/p/multi:1')).toEqual({
      digest,
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 's390x' },
      ],
    });
  });

  it('odd and hostile images: clear errors naming the image', async () => {
    await image('p/noarch', '1', { os: 'linux' });
    await expect(read('REG/p/noarch:1')).rejects.toThrow(/p\/noarch:1: config sha256:[0-9a-f]{64} names no architecture/);
    await image('p/win', '1', { os: 'windows', architecture: 'amd64' });
    await expect(read('REG/p/win:1')).rejects.toThrow(/p\/win:1: the image is for windows\/amd64, not linux/);
    const a = await image('p/winonly', 'a', { os: 'windows', architecture: 'amd64' });
    await putManifest('p/winonly', '1', 'application/vnd.oci.image.index.v1+json', {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: a.digest, size: a.size, platform: { os: 'windows', architecture: 'amd64' } }],
    });
    await expect(read('REG/p/winonly:1')).rejects.toThrow(/p\/winonly:1: the index lists no linux platform/);
    await expect(read('REG/p/none:1')).rejects.toThrow(/p\/none: manifest 1 not found/);
    const wrong = `sha256:${'0'.repeat(64)}`;
    await expect(read(`REG/p/arm@${wrong}`)).rejects.toThrow(/not found|does not match/);
  });
});
