// ImageService over @cello/image-puller: a verified blob cache and unpacked layer dirs under
// <state>/images, shared by every unit (and every restart) on the cell; whether a pod may use
// what another pod pulled is ImageAccess's to say (access.ts).
import { existsSync } from 'node:fs';
import { ImagePuller, PullError, type RegistryConfig } from '@cello/image-puller';
import type pino from 'pino';
import { ImageAccess } from './access.js';
import { type ImageInfo, ImagePullFailure, type ImageService, type RegistryAuth, registryOf } from './image-service.js';

type Pulled = Awaited<ReturnType<ImagePuller['pull']>>;

/** "host/repo:tag" or "host/repo@digest" without its tag or digest. */
function repositoryOf(ref: string): string {
  if (ref.includes('@')) return ref.slice(0, ref.indexOf('@'));
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  return colon > slash ? ref.slice(0, colon) : ref;
}

function toInfo(p: Pulled): ImageInfo {
  return {
    ref: p.reference,
    digest: p.digest,
    layerDirs: p.layerDirs,
    config: {
      entrypoint: p.config.entrypoint ?? [],
      cmd: p.config.cmd ?? [],
      env: p.config.env ?? [],
      workingDir: p.config.workingDir ?? '',
      user: p.config.user ?? '',
      stopSignal: p.config.stopSignal ?? '',
    },
  };
}

export class PullerImageService implements ImageService {
  private readonly puller: ImagePuller;
  // What this agent pulled or found, by reference: a cache hit on the start path costs one
  // existsSync per layer instead of reading the puller's records through the thread pool.
  private readonly known = new Map<string, ImageInfo>();
  private readonly access: ImageAccess;

  constructor(opts: { root: string; registries: RegistryConfig; logger: pino.Logger; accessFile?: string; plainHttp?: string[] }) {
    // The puller applies the plainHttp shorthand to every configuration, the later ones too.
    this.puller = new ImagePuller({ root: opts.root, registries: opts.registries, plainHttp: opts.plainHttp ?? [], logger: opts.logger });
    this.access = new ImageAccess(opts.accessFile);
  }

  async cached(ref: string, opts: { auth?: RegistryAuth | undefined; signal?: AbortSignal } = {}): Promise<ImageInfo | undefined> {
    let info = this.known.get(ref);
    if (!info || !info.layerDirs.every((d) => existsSync(d))) {
      const c = await this.puller.cached(ref);
      if (!c) return undefined;
      info = toInfo(c);
      this.known.set(ref, info);
    }
    if (this.access.allowed(repositoryOf(ref), info.digest, opts.auth)) return info;
    // Cached, but not yet shown to be this pod's to use: ask the registry for that very
    // manifest (by digest) with this pod's credentials, or none.
    const host = registryOf(ref);
    const byDigest = `${repositoryOf(info.ref)}@${info.digest}`;
    try {
      const seen = await this.puller.inspect(byDigest, {
        auth: (registry) => (opts.auth && registry === host ? opts.auth : undefined),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      if (seen.digest !== info.digest) throw new PullError('invalid', `${byDigest}: the registry answered ${seen.digest}`);
    } catch (err) {
      const kind = err instanceof PullError ? err.kind : 'unknown';
      throw new ImagePullFailure(`${ref}: cached, but the registry does not serve it to this pod's credentials: ${(err as Error).message}`, kind);
    }
    this.access.grant(repositoryOf(ref), info.digest, opts.auth);
    return info;
  }

  async pull(ref: string, opts: { auth?: RegistryAuth | undefined; signal?: AbortSignal }): Promise<ImageInfo> {
    const host = registryOf(ref);
    try {
      const { image: p, stats } = await this.puller.pullWithStats(ref, {
        auth: (registry) => (opts.auth && registry === host ? opts.auth : undefined),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const info = toInfo(p);
      this.known.set(ref, info);
      this.access.grant(repositoryOf(ref), info.digest, opts.auth);
      return { ...info, downloadedBytes: stats.downloadedBytes };
    } catch (err) {
      if (err instanceof PullError) throw new ImagePullFailure(err.message, err.kind);
      throw new ImagePullFailure((err as Error).message, 'unknown');
    }
  }

  /** Per-registry configuration for pulls from now on (ConfigureRegistries). */
  setRegistries(registries: RegistryConfig): void {
    this.puller.setRegistries(registries);
  }

  close(): Promise<void> {
    return this.puller.close();
  }
}
