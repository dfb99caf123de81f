// The pod's image manager, as the kubelet's images/ package: pull policy, one pull per image
// shared by the units that use it, the pod's registry credentials, and the per-image back-off
// a unit waits through (ErrImagePull, ImagePullBackOff) while its image cannot be had.
import { parseReference } from '@cello/image-puller';
import { type Container, PullPolicy, type RegistryCredential } from '@cello/proto/cell';
import { ImagePullFailure, type ImageInfo, type ImageService, type RegistryAuth, defaultPullAlways, registryOf } from '../images/image-service.js';
import { abortableSleep, Backoff, type BackoffPolicy } from './backoff.js';

/** What the image manager needs of a unit: its container and a way to show why it waits. */
export interface ImageUser {
  readonly name: string;
  readonly spec: Container;
  showWaiting(reason: string, message: string): void;
}

export interface ImageManagerOptions {
  images: ImageService;
  backoff: BackoffPolicy;
  /** The current pod's registry credentials (none before the first apply). */
  credentials: () => readonly RegistryCredential[];
  event: (type: 'Normal' | 'Warning', reason: string, message: string, container: string) => void;
  onPull?: ((p: { ok: boolean; bytes: number; seconds: number }) => void) | undefined;
}

export class ImageManager {
  private pulls = new Map<string, Promise<ImageInfo>>();
  private pullBackoff = new Map<string, Backoff>();

  constructor(private readonly o: ImageManagerOptions) {}

  /** Forgets the pulls kept for the pod's restarts (the pod was deleted). */
  forgetPulls(): void {
    this.pulls.clear();
  }

  private pullPolicyAlways(c: Container): boolean | 'never' {
    if (c.imagePullPolicy === PullPolicy.PULL_POLICY_NEVER) return 'never';
    if (c.imagePullPolicy === PullPolicy.PULL_POLICY_ALWAYS) return true;
    if (c.imagePullPolicy === PullPolicy.PULL_POLICY_IF_NOT_PRESENT) return false;
    return defaultPullAlways(c.image);
  }

  /**
   * The pod's credentials for an image: those given for its repository (or a path above it), else
   * for its registry host. The controller sends only what the pod's images need.
   */
  private registryAuth(ref: string): RegistryAuth | undefined {
    const cred = credentialFor(this.o.credentials(), ref);
    return cred ? { username: cred.username, password: cred.password, identityToken: cred.identityToken } : undefined;
  }

  /** The image if the cache holds it, looked up with the pod's credentials (an adopted unit's). */
  cached(ref: string): Promise<ImageInfo | undefined> {
    return this.o.images.cached(ref, { auth: this.registryAuth(ref) });
  }

  /** One pull per image at a time, shared by every unit that uses it. */
  pull(c: Container): Promise<ImageInfo> {
    const ref = c.image;
    const existing = this.pulls.get(ref);
    if (existing) return existing;
    const p = (async () => {
      const policy = this.pullPolicyAlways(c);
      const auth = this.registryAuth(ref);
      if (policy !== true) {
        // With this pod's credentials: the cache may hold another pod's private image.
        const cached = await this.o.images.cached(ref, { auth });
        if (cached) return cached;
        if (policy === 'never') throw new ImagePullFailure(`Container image "${ref}" is not present with pull policy of Never`, 'never');
      }
      this.o.event('Normal', 'Pulling', `Pulling image "${ref}"`, c.name);
      const t0 = Date.now();
      let img: ImageInfo;
      try {
        img = await this.o.images.pull(ref, { auth });
      } catch (err) {
        this.o.onPull?.({ ok: false, bytes: 0, seconds: (Date.now() - t0) / 1000 });
        throw err;
      }
      this.o.onPull?.({ ok: true, bytes: img.downloadedBytes ?? 0, seconds: (Date.now() - t0) / 1000 });
      this.o.event('Normal', 'Pulled', `Successfully pulled image "${ref}" in ${Date.now() - t0}ms`, c.name);
      return img;
    })();
    this.pulls.set(ref, p);
    // Keep a success for this pod generation's restarts; forget a failure so it is retried.
    p.catch(() => this.pulls.delete(ref));
    return p;
  }

  /** The unit's image, pulling with back-off (ErrImagePull, then ImagePullBackOff) until it comes or the signal aborts. */
  async ensure(u: ImageUser, signal: AbortSignal): Promise<ImageInfo | undefined> {
    for (;;) {
      if (signal.aborted) return undefined;
      try {
        const img = await this.pull(u.spec);
        this.pullBackoff.delete(u.spec.image);
        return img;
      } catch (err) {
        const never = err instanceof ImagePullFailure && err.kind === 'never';
        const msg = (err as Error).message;
        u.showWaiting(never ? 'ErrImageNeverPull' : 'ErrImagePull', msg);
        this.o.event('Warning', 'Failed', `Failed to pull image "${u.spec.image}": ${msg}`, u.name);
        let b = this.pullBackoff.get(u.spec.image);
        if (!b) this.pullBackoff.set(u.spec.image, (b = new Backoff(this.o.backoff)));
        const delay = Math.max(b.next(0), this.o.backoff.baseMs);
        await abortableSleep(Math.min(delay / 2, 2000), signal);
        if (signal.aborted) return undefined;
        u.showWaiting(never ? 'ErrImageNeverPull' : 'ImagePullBackOff', `Back-off pulling image "${u.spec.image}": ${msg}`);
        this.o.event('Normal', 'BackOff', `Back-off pulling image "${u.spec.image}"`, u.name);
        await abortableSleep(delay, signal);
      }
    }
  }
}

/** The credential with the longest `registry` that is the image's host or a path prefix of its repository. */
export function credentialFor(creds: readonly RegistryCredential[], ref: string): RegistryCredential | undefined {
  let repo: string;
  try {
    const r = parseReference(ref);
    repo = `${r.registry}/${r.repository}`;
  } catch {
    repo = `${registryOf(ref)}/`; // an invalid reference fails its pull; the host's credential is the best guess
  }
  let best: RegistryCredential | undefined;
  for (const c of creds) {
    const key = c.registry.replace(/\/+$/, '');
    if (repo !== key && !repo.startsWith(`${key}/`)) continue;
    if (!best || key.length > best.registry.replace(/\/+$/, '').length) best = c;
  }
  return best;
}
