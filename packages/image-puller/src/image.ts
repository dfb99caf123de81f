import { createHash } from 'node:crypto';
import { arch as hostArch } from 'node:os';
import { PullError } from './errors.js';
import { layerCompression, MT, type Compression } from './media.js';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ImageConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
  exposedPorts: string[];
  volumes: string[];
  stopSignal: string;
  labels: Record<string, string>;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

export interface LayerInfo {
  digest: string;
  mediaType: string;
  size: number;
  compression: Compression;
  diffId: string;
  chainId: string;
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

export function hostPlatform(): Platform {
  const a = hostArch();
  switch (a) {
    case 'x64':
      return { os: 'linux', architecture: 'amd64' };
    case 'arm64':
      return { os: 'linux', architecture: 'arm64', variant: 'v8' };
    case 'arm': {
      const v = (process.config.variables as { arm_version?: string }).arm_version;
      return { os: 'linux', architecture: 'arm', variant: `v${v ?? '7'}` };
    }
    case 'ia32':
      return { os: 'linux', architecture: '386' };
    case 'ppc64':
      return { os: 'linux', architecture: 'ppc64le' };
    default:
      return { os: 'linux', architecture: a };
  }
}

export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/.test(p))) {
    throw new PullError('invalid', `invalid platform ${JSON.stringify(s)}: expected os/arch[/variant], e.g. linux/arm64/v8`);
  }
  const p: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2]) p.variant = parts[2];
  return p;
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

function normVariant(arch: string, v: string | undefined): string {
  if (arch === 'arm64' && (v === undefined || v === '' || v === 'v8')) return 'v8';
  return v ?? '';
}

function validDescriptor(d: unknown, what: string): Descriptor {
  const x = d as Partial<Descriptor> | null;
  if (!x || typeof x !== 'object' || typeof x.digest !== 'string' || !DIGEST.test(x.digest)) {
    throw new PullError(
      x && typeof x.digest === 'string' && x.digest.includes(':') && !x.digest.startsWith('sha256:') ? 'unsupported' : 'invalid',
      `${what}: descriptor without a valid sha256 digest`,
    );
  }
  if (typeof x.size !== 'number' || !Number.isSafeInteger(x.size) || x.size < 0) throw new PullError('invalid', `${what}: descriptor ${x.digest} has no valid size`);
  return { mediaType: typeof x.mediaType === 'string' ? x.mediaType : '', digest: x.digest, size: x.size, ...(x.platform ? { platform: x.platform } : {}) };
}

function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  try {
    const j = JSON.parse(bytes.toString('utf8')) as unknown;
    if (j && typeof j === 'object' && !Array.isArray(j)) return j as Record<string, unknown>;
  } catch {
    /* fall through */
  }
  throw new PullError('invalid', `${what} is not a JSON object`);
}

export function isIndex(mediaType: string): boolean {
  return mediaType === MT.ociIndex || mediaType === MT.dockerList;
}

export function checkManifestType(mediaType: string, what: string): void {
  if (mediaType === MT.dockerSchema1 || mediaType === MT.dockerSchema1Signed) {
    throw new PullError('unsupported', `${what} is a Docker schema 1 manifest, which is not supported: push the image again with a current client`);
  }
  if (![MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].includes(mediaType as never)) {
    throw new PullError('unsupported', `${what} has unsupported media type ${JSON.stringify(mediaType)}`);
  }
}

/** Picks the manifest for `want` from an index; arm64's variant defaults to v8. */
export function selectPlatform(index: Buffer, want: Platform, what: string): Descriptor {
  const j = parseJson(index, what);
  if (!Array.isArray(j.manifests)) throw new PullError('invalid', `${what}: index without manifests`);
  const ds = j.manifests.map((d, i) => validDescriptor(d, `${what} manifests[${i}]`));
  const wantV = normVariant(want.architecture, want.variant);
  const matches = ds.filter((d) => d.platform?.os === want.os && d.platform?.architecture === want.architecture);
  const exact = matches.find((d) => normVariant(want.architecture, d.platform?.variant) === wantV);
  const pick = exact ?? (want.variant ? undefined : matches[0]);
  if (!pick) {
    const have = ds
      .map((d) =>
        d.platform
          ? formatPlatform({ os: d.platform.os ?? '?', architecture: d.platform.architecture ?? '?', ...(d.platform.variant ? { variant: d.platform.variant } : {}) })
          : '?',
      )
      .join(', ');
    throw new PullError('not-found', `${what}: no manifest for platform ${formatPlatform(want)} (available: ${have || 'none'})`);
  }
  return pick;
}

export interface ParsedManifest {
  config: Descriptor;
  layers: Descriptor[];
}

export function parseManifest(bytes: Buffer, mediaType: string, what: string): ParsedManifest {
  const j = parseJson(bytes, what);
  if (j.schemaVersion !== 2) throw new PullError('unsupported', `${what}: schemaVersion ${String(j.schemaVersion)} is not supported`);
  if (typeof j.mediaType === 'string' && j.mediaType !== mediaType && mediaType !== '') {
    throw new PullError('invalid', `${what}: mediaType ${j.mediaType} contradicts the served type ${mediaType}`);
  }
  const config = validDescriptor(j.config, `${what} config`);
  if (!Array.isArray(j.layers)) throw new PullError('invalid', `${what}: manifest without layers`);
  const layers = j.layers.map((d, i) => validDescriptor(d, `${what} layers[${i}]`));
  for (const l of layers) {
    if (layerCompression(l.mediaType) === undefined) throw new PullError('unsupported', `${what}: layer ${l.digest} has unsupported media type ${JSON.stringify(l.mediaType)}`);
  }
  if (config.mediaType && config.mediaType !== MT.ociConfig && config.mediaType !== MT.dockerConfig) {
    throw new PullError('unsupported', `${what}: config media type ${JSON.stringify(config.mediaType)} is not an image (artifact?)`);
  }
  return { config, layers };
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

export interface ParsedConfig {
  config: ImageConfig;
  diffIds: string[];
  os: string;
  architecture: string;
}

export function parseConfig(bytes: Buffer, what: string): ParsedConfig {
  const j = parseJson(bytes, what);
  const c = (j.config ?? {}) as Record<string, unknown>;
  const rootfs = (j.rootfs ?? {}) as { diff_ids?: unknown };
  const diffIds = strings(rootfs.diff_ids);
  if (!Array.isArray(rootfs.diff_ids) || diffIds.length !== rootfs.diff_ids.length || diffIds.some((d) => !DIGEST.test(d))) {
    throw new PullError('invalid', `${what}: rootfs.diff_ids missing or not sha256 digests`);
  }
  const labels: Record<string, string> = {};
  if (c.Labels && typeof c.Labels === 'object') {
    for (const [k, v] of Object.entries(c.Labels as Record<string, unknown>)) if (typeof v === 'string') labels[k] = v;
  }
  return {
    config: {
      entrypoint: strings(c.Entrypoint),
      cmd: strings(c.Cmd),
      env: strings(c.Env),
      workingDir: typeof c.WorkingDir === 'string' ? c.WorkingDir : '',
      user: typeof c.User === 'string' ? c.User : '',
      exposedPorts: c.ExposedPorts && typeof c.ExposedPorts === 'object' ? Object.keys(c.ExposedPorts) : [],
      volumes: c.Volumes && typeof c.Volumes === 'object' ? Object.keys(c.Volumes) : [],
      stopSignal: typeof c.StopSignal === 'string' ? c.StopSignal : '',
      labels,
    },
    diffIds,
    os: typeof j.os === 'string' ? j.os : '',
    architecture: typeof j.architecture === 'string' ? j.architecture : '',
  };
}

/** OCI ChainIDs: the identity of a layer together with everything below it. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

export function layerInfos(m: ParsedManifest, c: ParsedConfig, what: string): LayerInfo[] {
  if (m.layers.length !== c.diffIds.length) {
    throw new PullError('integrity', `${what}: manifest has ${m.layers.length} layers but the config lists ${c.diffIds.length} DiffIDs`);
  }
  const chains = chainIds(c.diffIds);
  return m.layers.map((l, i) => ({
    digest: l.digest,
    mediaType: l.mediaType,
    size: l.size,
    compression: layerCompression(l.mediaType)!,
    diffId: c.diffIds[i]!,
    chainId: chains[i]!,
  }));
}
