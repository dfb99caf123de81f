// Image platforms for scheduling, read from the registries: what each image of a pod can run on
// decides which cell architectures may serve it. Manifests are immutable, so a result is kept by
// digest for as long as it is used; a tag can move, so what a tag pointed at is trusted only for
// a short while (then one manifest GET finds its digest, and a known digest costs nothing more).
// Lookups are bounded in number and time: a registry that does not answer must fail the
// scheduling attempt (which retries), never hold it.
import { createHash } from 'node:crypto';
import { normalizeReference, parseReference, PullError, readImagePlatforms, type ImagePlatforms, type RegistryAuth } from '@cello/image-puller';
import { CelloError } from '../errors.js';
import { errMsg } from '../util/errors.js';
import type { RegistryClientFactory } from './registry-client.js';

export type { ImagePlatforms };

/** Credentials for one registry host, or undefined for anonymous access. */
export type RegistryCredentials = (registry: string) => RegistryAuth | undefined;

export interface ImagePlatformReaderOptions {
  clients: RegistryClientFactory;
  /** Registry reads at once, across all pods. */
  concurrency?: number;
  /** How long what a tag resolved to is trusted. */
  tagTtlMs?: number;
  /** Digests and tags remembered (least recently used go first). */
  maxEntries?: number;
  /** Deadline of one image's lookup. */
  timeoutMs?: number;
}

/** The registry could not tell (unreachable, refused, not found): scheduling waits and retries. */
export class ImagePlatformsUnknown extends CelloError {
  constructor(
    readonly image: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('Unavailable', message, options);
  }
}

/**
 * The registry answered that this image cannot be read (refused credentials, not found): it is
 * the cell's pull that must say so to the user (ErrImagePull with the registry's reason), as on
 * a kubelet, so scheduling goes ahead without this image's platforms.
 */
export class ImageUnreadable extends CelloError {
  constructor(
    readonly image: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('FailedPrecondition', message, options);
  }
}

/** A map that forgets its least recently used entries beyond a bound. */
class Lru<V> {
  private readonly m = new Map<string, V>();
  constructor(private readonly max: number) {}
  get(k: string): V | undefined {
    const v = this.m.get(k);
    if (v !== undefined) {
      this.m.delete(k);
      this.m.set(k, v);
    }
    return v;
  }
  set(k: string, v: V): void {
    this.m.delete(k);
    this.m.set(k, v);
    while (this.m.size > this.max) this.m.delete(this.m.keys().next().value!);
  }
}

export class ImagePlatformReader {
  private readonly byDigest: Lru<ImagePlatforms>;
  private readonly byTag: Lru<{ digest: string; until: number }>;
  private readonly inflight = new Map<string, Promise<ImagePlatforms>>();
  private readonly waiting: Array<() => void> = [];
  private running = 0;

  constructor(private readonly o: ImagePlatformReaderOptions) {
    this.byDigest = new Lru(o.maxEntries ?? 2000);
    this.byTag = new Lru(o.maxEntries ?? 2000);
  }

  /** The platforms of `image`, with `credentials` for its registry when the pod has them. */
  async platformsOf(image: string, credentials?: RegistryCredentials): Promise<ImagePlatforms> {
    let ref;
    try {
      ref = parseReference(image);
    } catch (err) {
      throw new CelloError('InvalidArgument', errMsg(err));
    }
    if (ref.digest) {
      const hit = this.byDigest.get(ref.digest);
      if (hit) return hit;
    }
    const name = normalizeReference(image);
    const auth = credentials?.(ref.registry);
    // Whose view of the tag: another pod's credentials (a wrong password for the same user
    // included) must not answer for this one. Only a hash of them is kept.
    const who = auth
      ? createHash('sha256')
          .update(JSON.stringify([auth.username, auth.password, auth.identityToken]))
          .digest('hex')
          .slice(0, 32)
      : '';
    const tagKey = `${name}|${who}`;
    const tagged = this.byTag.get(tagKey);
    if (tagged && tagged.until > Date.now()) {
      const hit = this.byDigest.get(tagged.digest);
      if (hit) return hit;
    }
    let p = this.inflight.get(tagKey);
    if (!p) {
      p = this.read(name, auth).finally(() => this.inflight.delete(tagKey));
      this.inflight.set(tagKey, p);
    }
    const r = await p;
    this.byTag.set(tagKey, { digest: r.digest, until: Date.now() + (this.o.tagTtlMs ?? 60_000) });
    return r;
  }

  private async read(name: string, auth: RegistryAuth | undefined): Promise<ImagePlatforms> {
    await this.slot();
    const signal = AbortSignal.timeout(this.o.timeoutMs ?? 10_000);
    try {
      const client = this.o.clients(name, auth, signal);
      const r = await readImagePlatforms(client, parseReference(name), (d) => this.byDigest.get(d));
      this.byDigest.set(r.digest, r);
      return r;
    } catch (err) {
      const why = signal.aborted ? `no answer within ${(this.o.timeoutMs ?? 10_000) / 1000} s` : errMsg(err);
      if (!signal.aborted && err instanceof PullError && (err.kind === 'auth' || err.kind === 'not-found'))
        throw new ImageUnreadable(name, `reading the platforms of ${name}: ${why}`, { cause: err });
      throw new ImagePlatformsUnknown(name, `reading the platforms of ${name}: ${why}`, { cause: err });
    } finally {
      // The slot passes straight to a waiter, so a newcomer cannot slip in between.
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  private async slot(): Promise<void> {
    if (this.running < (this.o.concurrency ?? 8)) {
      this.running++;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }

  close(): Promise<void> {
    return this.o.clients.close();
  }
}
