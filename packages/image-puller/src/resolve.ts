// An image's identity without its layers: the manifest (through an index, for the wanted
// platform) and the config, verified against their digests. A node that only records images
// (the CRI shim: the cell pulls the layers) needs exactly this, and never the layer bytes.
import type { RegistryAuth } from './auth.js';
import { PullError } from './errors.js';
import { checkManifestType, formatPlatform, hostPlatform, isIndex, layerInfos, parseConfig, parseManifest, selectPlatform, type ImageConfig, type Platform } from './image.js';
import { formatReference } from './reference.js';
import type { RegistryReader } from './source.js';

/** An image config bigger than this is refused: real ones are a few KiB. */
const MAX_CONFIG_BYTES = 4 << 20;

export interface ResolvedLayer {
  digest: string;
  mediaType: string;
  size: number;
  diffId: string;
}

export interface ResolvedImage {
  /** The reference as asked, normalised (`docker.io/library/busybox:latest`). */
  reference: string;
  registry: string;
  repository: string;
  /** The digest the reference resolved to: an index's when it named one (what `repo@digest` pulls again). */
  digest: string;
  /** The platform's own manifest (equal to `digest` when the reference named a single manifest). */
  manifestDigest: string;
  manifestMediaType: string;
  /** The image's identity (containerd's and Docker's image ID). */
  configDigest: string;
  /** The config blob as the registry served it (verified). */
  configBytes: Buffer;
  config: ImageConfig;
  platform: Platform;
  layers: ResolvedLayer[];
  /** Bytes of the content a pull fetches for this platform: manifest, config and compressed layers. */
  size: number;
}

export interface ResolveOptions {
  /** Default: the host's platform. */
  platform?: Platform;
  /** Credentials by the host asked (a mirror is looked up by its own host). */
  auth?: (host: string) => RegistryAuth | undefined;
  signal?: AbortSignal;
}

/** Resolves `ref` to its manifest and config through `reader` (mirrors, rewrites, TLS as configured). */
export async function resolveImage(reader: RegistryReader, ref: string, opts: ResolveOptions = {}): Promise<ResolvedImage> {
  const want = opts.platform ?? hostPlatform();
  const { source, reference } = reader.open(ref, { ...(opts.auth ? { auth: opts.auth } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
  const name = formatReference(reference);
  const top = await source.getManifest(reference.digest ?? reference.tag!, reference.digest);
  checkManifestType(top.mediaType, name);
  let m = top;
  if (isIndex(top.mediaType)) {
    const desc = selectPlatform(top.bytes, want, name);
    m = await source.getManifest(desc.digest, desc.digest);
    checkManifestType(m.mediaType, `${name} (${desc.digest})`);
    if (isIndex(m.mediaType)) throw new PullError('unsupported', `${name}: nested image indexes are not supported`);
  }
  const manifest = parseManifest(m.bytes, m.mediaType, name);
  if (manifest.config.size > MAX_CONFIG_BYTES)
    throw new PullError('invalid', `${name}: config ${manifest.config.digest} is ${manifest.config.size} bytes (most ${MAX_CONFIG_BYTES})`);
  const configBytes = await source.getBlob(manifest.config.digest, MAX_CONFIG_BYTES);
  const cfg = parseConfig(configBytes, `${name} config`);
  const platform: Platform = { os: cfg.os || 'linux', architecture: cfg.architecture };
  const variant = (JSON.parse(configBytes.toString('utf8')) as { variant?: unknown }).variant;
  if (typeof variant === 'string' && variant) platform.variant = variant;
  // A single manifest says nothing of its platform until its config: refuse the wrong one here,
  // as a pull for this node would, instead of recording an image no cell could run.
  if (platform.os !== want.os || platform.architecture !== want.architecture) {
    throw new PullError('not-found', `${name}: the image is for ${formatPlatform(platform)}, not ${formatPlatform(want)}`);
  }
  const layers = layerInfos(manifest, cfg, name).map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size, diffId: l.diffId }));
  const size = m.bytes.length + configBytes.length + layers.reduce((n, l) => n + l.size, 0);
  return {
    reference: name,
    registry: reference.registry,
    repository: reference.repository,
    digest: top.digest,
    manifestDigest: m.digest,
    manifestMediaType: m.mediaType,
    configDigest: manifest.config.digest,
    configBytes,
    config: cfg.config,
    platform,
    layers,
    size,
  };
}
