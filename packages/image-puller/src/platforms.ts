// Which platforms an image can run on, read from its registry without pulling it: an index lists
// its manifests' platforms; a single manifest says nothing itself, so its config (one small
// blob) gives the one architecture. The controller asks this when it chooses a cell's
// architecture, so the answer is keyed by the manifest's digest for callers to cache.
import { PullError } from './errors.js';
import { checkManifestType, formatPlatform, isIndex, parseManifest, type Platform } from './image.js';
import { formatReference, type Reference } from './reference.js';
import type { RegistryClient } from './registry.js';

export interface ImagePlatforms {
  /** The digest of the manifest (or index) the reference named. */
  digest: string;
  /** linux platforms only, in the registry's order; never empty. */
  platforms: Platform[];
}

/**
 * The platforms of `ref` (digest of the top manifest first). `known` lets a caller that caches by
 * digest stop after the manifest: when it returns a result, no config blob is fetched.
 */
export async function readImagePlatforms(client: RegistryClient, ref: Reference, known?: (digest: string) => ImagePlatforms | undefined): Promise<ImagePlatforms> {
  const what = formatReference(ref);
  const m = await client.getManifest(ref.digest ?? ref.tag!, ref.digest);
  const cached = known?.(m.digest);
  if (cached) return cached;
  checkManifestType(m.mediaType, what);
  if (isIndex(m.mediaType)) {
    const platforms = indexPlatforms(m.bytes, what);
    return { digest: m.digest, platforms };
  }
  const manifest = parseManifest(m.bytes, m.mediaType, what);
  const config = await client.getBlob(manifest.config.digest, 1 << 20);
  let j: { os?: unknown; architecture?: unknown; variant?: unknown };
  try {
    j = JSON.parse(config.toString('utf8')) as typeof j;
  } catch {
    throw new PullError('invalid', `${what}: config ${manifest.config.digest} is not JSON`);
  }
  if (typeof j.architecture !== 'string' || j.architecture === '') throw new PullError('invalid', `${what}: config ${manifest.config.digest} names no architecture`);
  const p: Platform = { os: typeof j.os === 'string' && j.os ? j.os : 'linux', architecture: j.architecture };
  if (typeof j.variant === 'string' && j.variant) p.variant = j.variant;
  if (p.os !== 'linux') throw new PullError('unsupported', `${what}: the image is for ${formatPlatform(p)}, not linux`);
  return { digest: m.digest, platforms: [p] };
}

function indexPlatforms(bytes: Buffer, what: string): Platform[] {
  let j: { manifests?: unknown };
  try {
    j = JSON.parse(bytes.toString('utf8')) as typeof j;
  } catch {
    throw new PullError('invalid', `${what}: index is not JSON`);
  }
  if (!Array.isArray(j.manifests)) throw new PullError('invalid', `${what}: index without manifests`);
  const out: Platform[] = [];
  for (const d of j.manifests as Array<{ platform?: { os?: unknown; architecture?: unknown; variant?: unknown } } | null>) {
    const pl = d?.platform;
    // Attestations and other artifacts ride in indexes as unknown/unknown entries: not platforms.
    if (!pl || pl.os !== 'linux' || typeof pl.architecture !== 'string' || pl.architecture === 'unknown') continue;
    const p: Platform = { os: 'linux', architecture: pl.architecture };
    if (typeof pl.variant === 'string' && pl.variant) p.variant = pl.variant;
    out.push(p);
  }
  if (out.length === 0) throw new PullError('unsupported', `${what}: the index lists no linux platform`);
  return out;
}
