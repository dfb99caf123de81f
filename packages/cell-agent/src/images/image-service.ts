// What the runtime needs from images. The agent uses @cello/image-puller through this, so the
// unit runtime does not depend on how or where images are fetched and cached.
import { CelloError, type ErrorCode } from '@cello/proto';
export interface ImageConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
  stopSignal: string;
}

export interface ImageInfo {
  ref: string;
  digest: string;
  config: ImageConfig;
  /** Unpacked layer directories, bottom first, usable as overlayfs lower dirs. */
  layerDirs: string[];
  /** Bytes fetched from the registry by the pull that returned this (0 when all cached). */
  downloadedBytes?: number;
}

export interface RegistryAuth {
  username?: string;
  password?: string;
  identityToken?: string;
}

/** Why a pull failed, as the status shows it. */
export class ImagePullFailure extends CelloError {
  constructor(
    message: string,
    /** not-found, unauthorized, unreachable, invalid, ... (image-puller's PullError kind) */
    readonly kind: string,
  ) {
    super(PULL_FAILURE_CODES[kind] ?? 'FailedPrecondition', message);
  }
}

const PULL_FAILURE_CODES: Record<string, ErrorCode> = { 'not-found': 'NotFound', auth: 'PermissionDenied', network: 'Unavailable', invalid: 'InvalidArgument', never: 'NotFound' };

export interface ImageService {
  /**
   * The image if it is in the local cache and a pod with these credentials may use it: without
   * touching the network when it was pulled anonymously or with the same credentials, else
   * after the registry served its manifest to them (throws ImagePullFailure when it does not).
   */
  cached(ref: string, opts?: { auth?: RegistryAuth | undefined; signal?: AbortSignal }): Promise<ImageInfo | undefined>;
  /** Fetches the image (or refreshes it) and returns it; throws ImagePullFailure. */
  pull(ref: string, opts: { auth?: RegistryAuth | undefined; signal?: AbortSignal }): Promise<ImageInfo>;
}

/** The registry host of an image reference, as Docker names it ("docker.io" when none). */
export function registryOf(ref: string): string {
  const first = ref.split('/')[0]!;
  if (ref.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) return first;
  return 'docker.io';
}

/** Kubernetes' default: Always for ":latest" or no tag (and no digest), IfNotPresent otherwise. */
export function defaultPullAlways(ref: string): boolean {
  if (ref.includes('@')) return false;
  const last = ref.split('/').pop()!;
  const i = last.lastIndexOf(':');
  return i < 0 || last.slice(i + 1) === 'latest';
}
