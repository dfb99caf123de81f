import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { requireCommand, type RegistryServer } from './registry.js';

const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export type FixtureSet = 'busybox' | 'debian';

export interface Fixtures {
  /** Cache directory of the set; `layout` is an OCI image layout with the set's tags. */
  dir: string;
  layout: string;
  tags: string[];
}

const built = new Map<FixtureSet, Promise<Fixtures>>();

/**
 * Builds (or finds in the cache) a fixture set with scripts/fixtures/build.mjs. busybox takes
 * about a second; debian needs debootstrap and the Debian mirror the first time (about a minute).
 */
export function buildFixtures(set: FixtureSet): Promise<Fixtures> {
  let p = built.get(set);
  if (!p) {
    p = (async () => {
      if (set === 'busybox') requireCommand('busybox', 'busybox-static');
      else requireCommand('debootstrap', 'debootstrap');
      const { stdout } = await run(process.execPath, [join(repoRoot, 'scripts', 'fixtures', 'build.mjs'), set], { maxBuffer: 1 << 20, timeout: 15 * 60_000 });
      const dir = stdout.trim().split('\n').pop()!;
      const meta = JSON.parse(readFileSync(join(dir, 'fixtures.json'), 'utf8')) as { tags: string[] };
      return { dir, layout: join(dir, 'layout'), tags: meta.tags };
    })();
    built.set(set, p);
    p.catch(() => built.delete(set));
  }
  return p;
}

export interface PushOptions {
  /** `oci` keeps the layout's manifests; `v2s2` converts to Docker schema 2 (gzip layers only). */
  format?: 'oci' | 'v2s2';
  /** Push a whole index (multi-platform) with its manifests, digests preserved. */
  all?: boolean;
  /** `user:password` for a registry that requires auth (test credentials only: they go on skopeo's argv). */
  creds?: string;
}

/** Copies tag `tag` of an OCI layout to `registry` as `name` (e.g. `busybox:latest`) with skopeo. */
export async function pushLayoutTag(registry: RegistryServer, layout: string, tag: string, name: string, opts: PushOptions = {}): Promise<string> {
  requireCommand('skopeo', 'skopeo');
  const dest = `${registry.host}/${name}`;
  const args = ['copy', '--quiet', '--dest-tls-verify=false'];
  if (opts.format === 'v2s2') args.push('--format', 'v2s2');
  else args.push('--preserve-digests');
  if (opts.all) args.push('--all');
  if (opts.creds) args.push('--dest-creds', opts.creds);
  if (registry.certDir) args.push('--dest-cert-dir', registry.certDir);
  args.push(`oci:${layout}:${tag}`, `docker://${dest}`);
  await run('skopeo', args, { timeout: 5 * 60_000, maxBuffer: 1 << 22 });
  return dest;
}

/** Pushes the one-layer busybox image (OCI, gzip); returns its reference, e.g. `127.0.0.1:PORT/busybox:latest`. */
export async function pushBusybox(registry: RegistryServer, name = 'busybox:latest', opts: PushOptions = {}): Promise<string> {
  const f = await buildFixtures('busybox');
  return pushLayoutTag(registry, f.layout, 'busybox', name, opts);
}

export interface PushedFixtures {
  busybox: string;
  busyboxV2s2: string;
  busyboxMulti: string;
  debianGzip?: string;
  debianZstd?: string;
  debianPlain?: string;
  debianShared?: string;
}

/** Pushes every fixture (the debian ones only when `debian` is true, since they are big). */
export async function pushFixtures(registry: RegistryServer, { debian = true }: { debian?: boolean } = {}): Promise<PushedFixtures> {
  const bb = await buildFixtures('busybox');
  const out: PushedFixtures = {
    busybox: await pushLayoutTag(registry, bb.layout, 'busybox', 'busybox:latest'),
    busyboxV2s2: await pushLayoutTag(registry, bb.layout, 'busybox', 'busybox:v2s2', { format: 'v2s2' }),
    busyboxMulti: await pushLayoutTag(registry, bb.layout, 'busybox-multi', 'busybox:multi', { all: true }),
  };
  if (debian) {
    const d = await buildFixtures('debian');
    out.debianGzip = await pushLayoutTag(registry, d.layout, 'debian-gzip', 'debian:gzip');
    out.debianZstd = await pushLayoutTag(registry, d.layout, 'debian-zstd', 'debian:zstd');
    out.debianPlain = await pushLayoutTag(registry, d.layout, 'debian-plain', 'debian:plain');
    out.debianShared = await pushLayoutTag(registry, d.layout, 'debian-shared', 'debian:shared');
  }
  return out;
}

function http(
  method: string,
  url: string,
  body?: Buffer,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolvePromise, reject) => {
    const u = new URL(url);
    const req = request(
      { host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) }, timeout: 30_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.end(body);
  });
}

function digestOf(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** Uploads one blob to `repo` (monolithic upload); returns its digest. */
export async function pushBlob(registry: RegistryServer, repo: string, blob: Buffer): Promise<string> {
  const digest = digestOf(blob);
  const start = await http('POST', `${registry.url}/v2/${repo}/blobs/uploads/`);
  if (start.status !== 202) throw new Error(`blob upload to ${repo}: HTTP ${start.status} ${start.body.toString().slice(0, 200)}`);
  const loc = new URL(String(start.headers.location), registry.url);
  loc.searchParams.set('digest', digest);
  const put = await http('PUT', loc.toString(), blob, { 'content-type': 'application/octet-stream' });
  if (put.status !== 201) throw new Error(`blob upload to ${repo}: HTTP ${put.status} ${put.body.toString().slice(0, 200)}`);
  return digest;
}

export interface RawLayer {
  /** The blob as stored (compressed or not). */
  blob: Buffer;
  /** sha256 of the uncompressed tar; defaults to the blob's digest (uncompressed layer). */
  diffId?: string;
  mediaType?: string;
}

/**
 * Pushes an image made of raw layer blobs over the registry API, with no validation at all: for
 * hostile and malformed images. Returns the reference `HOST/NAME` and the manifest digest.
 */
export async function pushImage(registry: RegistryServer, name: string, layers: RawLayer[], config: Record<string, unknown> = {}): Promise<{ ref: string; digest: string }> {
  const colon = name.lastIndexOf(':');
  const repo = colon > 0 ? name.slice(0, colon) : name;
  const tag = colon > 0 ? name.slice(colon + 1) : 'latest';
  const descs = [];
  for (const l of layers) {
    const digest = await pushBlob(registry, repo, l.blob);
    descs.push({ mediaType: l.mediaType ?? 'application/vnd.oci.image.layer.v1.tar', digest, size: l.blob.length });
  }
  const cfg = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['sh'], ...config },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId ?? digestOf(l.blob)) },
    }),
  );
  const cfgDigest = await pushBlob(registry, repo, cfg);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
      layers: descs,
    }),
  );
  const put = await http('PUT', `${registry.url}/v2/${repo}/manifests/${tag}`, manifest, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
  if (put.status !== 201) throw new Error(`manifest push ${name}: HTTP ${put.status} ${put.body.toString().slice(0, 300)}`);
  return { ref: `${registry.host}/${repo}:${tag}`, digest: digestOf(manifest) };
}

/**
 * A pause-like image (what registry.k8s.io/pause is to a runtime's pod sandbox: a process that
 * outlives every container of the pod): the busybox fixture's layer with `sleep` as its
 * entrypoint. Returns its reference.
 */
export async function pushPause(registry: RegistryServer, name = 'pause:test'): Promise<string> {
  const f = await buildFixtures('busybox');
  const blob = (d: string) => readFileSync(join(f.layout, 'blobs', 'sha256', d.slice('sha256:'.length)));
  const index = JSON.parse(readFileSync(join(f.layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const m = index.manifests.find((x) => x.annotations?.['org.opencontainers.image.ref.name'] === 'busybox');
  if (!m) throw new Error(`the busybox fixture layout ${f.layout} has no busybox tag`);
  const manifest = JSON.parse(blob(m.digest).toString()) as { config: { digest: string }; layers: { digest: string; mediaType: string }[] };
  const config = JSON.parse(blob(manifest.config.digest).toString()) as { rootfs: { diff_ids: string[] } };
  const layers = manifest.layers.map((l, i) => ({ blob: blob(l.digest), mediaType: l.mediaType, diffId: config.rootfs.diff_ids[i]! }));
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  return (await pushImage(registry, name, layers, { Entrypoint: ['/bin/sleep', '2147483647'], Cmd: null, Env: env })).ref;
}
