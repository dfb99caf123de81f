// ImageService over @cello/image-puller: a verified blob cache and unpacked layer dirs under
// <state>/images, shared by every unit (and every restart) on the cell.
import { existsSync } from 'node:fs';
import { ImagePuller, PullError } from '@cello/image-puller';
import type pino from 'pino';
import { type ImageInfo, ImagePullFailure, type ImageService, type RegistryAuth, registryOf } from './image-service.js';

type Pulled = Awaited<ReturnType<ImagePuller['pull']>>;

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

  constructor(opts: { root: string; insecureRegistries: string[]; logger: pino.Logger }) {
    this.puller = new ImagePuller({ root: opts.root, plainHttp: opts.insecureRegistries, insecure: opts.insecureRegistries, logger: opts.logger });
  }

  async cached(ref: string): Promise<ImageInfo | undefined> {
    const k = this.known.get(ref);
    if (k && k.layerDirs.every((d) => existsSync(d))) return k;
    const c = await this.puller.cached(ref);
    if (!c) return undefined;
    const info = toInfo(c);
    this.known.set(ref, info);
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
      return { ...info, downloadedBytes: stats.downloadedBytes };
    } catch (err) {
      if (err instanceof PullError) throw new ImagePullFailure(err.message, err.kind);
      throw new ImagePullFailure((err as Error).message, 'unknown');
    }
  }

  close(): Promise<void> {
    return this.puller.close();
  }
}
