// Images of known platforms in a real registry: an amd64-only image, an arm64-only one and a
// multi-arch index over both (an index is just JSON pushed as a manifest).
import { createHash } from 'node:crypto';
import { pushBlob, type RegistryServer } from '@cello/testkit';

export interface PlatformImages {
  amd64: string;
  arm64: string;
  multi: string;
  /** Digests of the three manifests (the index for multi). */
  digests: { amd64: string; arm64: string; multi: string };
}

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function put(registry: RegistryServer, repo: string, tag: string, mediaType: string, body: Buffer): Promise<void> {
  const r = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType }, body, signal: AbortSignal.timeout(10_000) });
  if (r.status !== 201) throw new Error(`manifest push ${repo}:${tag}: HTTP ${r.status} ${await r.text()}`);
}

/** One single-platform image (a one-file layer); returns its manifest and digest. */
async function single(registry: RegistryServer, repo: string, tag: string, architecture: string): Promise<{ manifest: Buffer; digest: string }> {
  const layer = Buffer.from(`a layer for ${architecture}\n`);
  const layerDigest = await pushBlob(registry, repo, layer);
  const cfg = Buffer.from(JSON.stringify({ architecture, os: 'linux', config: { Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: [layerDigest] } }));
  const cfgDigest = await pushBlob(registry, repo, cfg);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
    }),
  );
  await put(registry, repo, tag, 'application/vnd.oci.image.manifest.v1+json', manifest);
  return { manifest, digest: digestOf(manifest) };
}

export async function pushPlatformImages(registry: RegistryServer, host = registry.host): Promise<PlatformImages> {
  const a = await single(registry, 'arch/amd64-only', '1', 'amd64');
  const b = await single(registry, 'arch/arm64-only', '1', 'arm64');
  // The index's entries live in its own repository, as `docker buildx` pushes them.
  const ma = await single(registry, 'arch/multi', 'amd64', 'amd64');
  const mb = await single(registry, 'arch/multi', 'arm64', 'arm64');
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: ma.digest, size: ma.manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
        { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: mb.digest, size: mb.manifest.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        // An attestation, as BuildKit adds: not a platform.
        { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: ma.digest, size: ma.manifest.length, platform: { os: 'unknown', architecture: 'unknown' } },
      ],
    }),
  );
  await put(registry, 'arch/multi', '1', 'application/vnd.oci.image.index.v1+json', index);
  return {
    amd64: `${host}/arch/amd64-only:1`,
    arm64: `${host}/arch/arm64-only:1`,
    multi: `${host}/arch/multi:1`,
    digests: { amd64: a.digest, arm64: b.digest, multi: digestOf(index) },
  };
}
