// resolveImage against a real registry (CNCF distribution) behind a request log: an index's
// manifest for the wanted platform, the config verified, the size a pull would fetch, and not
// one layer byte fetched.
import { createHash } from 'node:crypto';
import { pushBlob, startRegistry, startRequestLog, type RegistryServer, type RequestLog } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRegistryReader, parseRegistryConfig, PullError, resolveImage, type RegistryReader } from '../src/index.js';

let registry: RegistryServer;
let log: RequestLog;
let reader: RegistryReader;
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

async function putManifest(repo: string, tag: string, mediaType: string, body: unknown): Promise<{ digest: string; size: number }> {
  const b = Buffer.from(JSON.stringify(body));
  const r = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType }, body: b, signal: AbortSignal.timeout(10_000) });
  if (r.status !== 201) throw new Error(`push ${repo}:${tag}: HTTP ${r.status} ${await r.text()}`);
  return { digest: digestOf(b), size: b.length };
}

interface Pushed {
  digest: string;
  size: number;
  configDigest: string;
  configSize: number;
  layerDigest: string;
  layerSize: number;
}

async function image(repo: string, tag: string, architecture: string): Promise<Pushed> {
  const layer = Buffer.from(`layer for ${architecture}`.padEnd(300, '.'));
  const layerDigest = await pushBlob(registry, repo, layer);
  const cfg = Buffer.from(JSON.stringify({ architecture, os: 'linux', config: { User: '1000', Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: [layerDigest] } }));
  const configDigest = await pushBlob(registry, repo, cfg);
  const m = await putManifest(repo, tag, OCI_MANIFEST, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: cfg.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
  });
  return { ...m, configDigest, configSize: cfg.length, layerDigest, layerSize: layer.length };
}

let amd: Pushed;
let arm: Pushed;
let index: { digest: string };

beforeAll(async () => {
  registry = await startRegistry();
  log = await startRequestLog(registry.url);
  reader = createRegistryReader(parseRegistryConfig({ [log.host]: { plainHttp: true } }), { transport: { attempts: 1 } });
  amd = await image('multi', 'amd64', 'amd64');
  arm = await image('multi', 'arm64', 'arm64');
  index = await putManifest('multi', 'both', OCI_INDEX, {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { mediaType: OCI_MANIFEST, digest: amd.digest, size: amd.size, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: OCI_MANIFEST, digest: arm.digest, size: arm.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ],
  });
});

afterAll(async () => {
  await reader?.close();
  await log?.stop();
  await registry?.stop();
});

describe('resolveImage', () => {
  it("an index: the wanted platform's manifest and config, its size, and no layer fetched", async () => {
    log.requests.length = 0;
    const r = await resolveImage(reader, `${log.host}/multi:both`, { platform: { os: 'linux', architecture: 'arm64' } });
    expect(r.reference).toBe(`${log.host}/multi:both`);
    expect(r.digest).toBe(index.digest);
    expect(r.manifestDigest).toBe(arm.digest);
    expect(r.manifestMediaType).toBe(OCI_MANIFEST);
    expect(r.configDigest).toBe(arm.configDigest);
    expect(digestOf(r.configBytes)).toBe(arm.configDigest);
    expect(r.config.user).toBe('1000');
    expect(r.platform).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(r.layers).toEqual([{ digest: arm.layerDigest, mediaType: 'application/vnd.oci.image.layer.v1.tar', size: arm.layerSize, diffId: arm.layerDigest }]);
    expect(r.size).toBe(arm.size + arm.configSize + arm.layerSize);
    expect(log.count(new RegExp(`/blobs/${arm.layerDigest}`))).toBe(0);
    expect(log.count(new RegExp(`/blobs/${arm.configDigest}`), 'GET')).toBe(1);
  });

  it('by digest, and a single manifest: its own digest is the repo digest', async () => {
    const r = await resolveImage(reader, `${log.host}/multi@${amd.digest}`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(r.digest).toBe(amd.digest);
    expect(r.manifestDigest).toBe(amd.digest);
    expect(r.configDigest).toBe(amd.configDigest);
  });

  it('a platform the image does not have is NotFound, naming what it has', async () => {
    const fromIndex = await resolveImage(reader, `${log.host}/multi:both`, { platform: { os: 'linux', architecture: 's390x' } }).catch((e: unknown) => e);
    expect(fromIndex).toBeInstanceOf(PullError);
    expect((fromIndex as PullError).kind).toBe('not-found');
    expect((fromIndex as PullError).message).toContain('linux/amd64');
    // A single manifest names its platform only in its config: still refused.
    const single = await resolveImage(reader, `${log.host}/multi:arm64`, { platform: { os: 'linux', architecture: 'amd64' } }).catch((e: unknown) => e);
    expect((single as PullError).kind).toBe('not-found');
    expect((single as PullError).message).toContain('the image is for linux/arm64, not linux/amd64');
  });

  it('a missing tag is NotFound', async () => {
    const err = await resolveImage(reader, `${log.host}/multi:nope`).catch((e: unknown) => e);
    expect((err as PullError).kind).toBe('not-found');
  });
});
