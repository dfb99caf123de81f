// CRI ImageService on a node whose pods run elsewhere: PullImage resolves the image's manifest
// and config (the node learns its real ID, size and user) and records it; the layers are pulled
// by the cell that runs the pod. The other RPCs answer from the records.
import { PullError, resolveImage, type Platform, type RegistryReader } from '@cello/image-puller';
import { CelloError } from '@cello/proto';
import type { Logger } from 'pino';
import type {
  Image,
  ImageFsInfoRequest,
  ImageFsInfoResponse,
  ImageStatusRequest,
  ImageStatusResponse,
  ListImagesRequest,
  ListImagesResponse,
  PullImageRequest,
  PullImageResponse,
  RemoveImageRequest,
  RemoveImageResponse,
} from '../gen/runtime/v1/api.js';
import type { ImageRecord, ImageStore } from './image-store.js';
import { findImage, parseImageField, repoDigestName, tagName } from './names.js';
import { pullCredentials } from './pull-auth.js';

export interface ImageServiceOptions {
  store: ImageStore;
  reader: RegistryReader;
  /** The platform of the cells this node's pods run on. */
  platform: Platform;
  logger: Logger;
}

/** A registry's answer as the kubelet should see it (its ErrImagePull reasons key off the code). */
function pullFailure(err: PullError, image: string): CelloError {
  const msg = `pulling ${image}: ${err.message}`;
  switch (err.kind) {
    case 'not-found':
      return new CelloError('NotFound', msg, { cause: err });
    case 'auth':
      return new CelloError('PermissionDenied', msg, { cause: err });
    case 'network':
      return new CelloError('Unavailable', msg, { cause: err });
    case 'invalid':
      return new CelloError('InvalidArgument', msg, { cause: err });
    // The registry served an image this node cannot take (bad digests, hostile content, an
    // unsupported format): the image's problem, not a bug here.
    case 'unsupported':
    case 'integrity':
    case 'unsafe-content':
      return new CelloError('FailedPrecondition', msg, { cause: err });
    default:
      return new CelloError('Internal', msg, { cause: err });
  }
}

/** The user part of an image's `User` (before any `:group`): a uid when numeric, else a name; containerd's reading. */
function imageUser(user: string): Pick<Image, 'uid' | 'username'> {
  const name = user.split(':')[0] ?? '';
  if (name === '') return { uid: undefined, username: '' };
  if (/^[0-9]+$/.test(name)) return { uid: { value: BigInt(name) }, username: '' };
  return { uid: undefined, username: name };
}

export function toCriImage(r: ImageRecord): Image {
  return {
    id: r.id,
    repoTags: r.repoTags,
    repoDigests: r.repoDigests,
    size: BigInt(r.size),
    ...imageUser(r.user),
    spec: { image: r.id, annotations: r.annotations, userSpecifiedImage: '', runtimeHandler: '' },
    pinned: false,
  };
}

export class CriImageService {
  constructor(private readonly o: ImageServiceOptions) {}

  async pullImage(req: PullImageRequest, signal: AbortSignal): Promise<PullImageResponse> {
    const image = req.image?.image ?? '';
    const ref = parseImageField(image, 'image.image');
    if (req.image?.runtimeHandler) {
      throw new CelloError('InvalidArgument', `image.runtime_handler ${JSON.stringify(req.image.runtimeHandler)}: cello-cri has one runtime handler, the default ("")`);
    }
    const auth = pullCredentials(req.auth, ref);
    const t0 = Date.now();
    let resolved;
    try {
      resolved = await resolveImage(this.o.reader, image, { platform: this.o.platform, ...(auth ? { auth } : {}), signal });
    } catch (err) {
      if (signal.aborted) throw new CelloError('DeadlineExceeded', `pulling ${image}: the call was cancelled`, { cause: err });
      if (err instanceof PullError) throw pullFailure(err, image);
      throw err;
    }
    if (signal.aborted) throw new CelloError('DeadlineExceeded', `pulling ${image}: the call was cancelled`);
    const tag = tagName(ref);
    const rec = await this.o.store.add(
      {
        id: resolved.configDigest,
        size: resolved.size,
        user: resolved.config.user,
        manifestDigest: resolved.manifestDigest,
        manifestMediaType: resolved.manifestMediaType,
        platform: resolved.platform,
        layers: resolved.layers,
        config: JSON.parse(resolved.configBytes.toString('utf8')) as unknown,
        pulledAt: new Date().toISOString(),
        annotations: req.image?.annotations ?? {},
      },
      { ...(tag ? { tag } : {}), repoDigest: repoDigestName(ref, resolved.digest) },
    );
    this.o.logger.info({ image, id: rec.id, digest: resolved.digest, ms: Date.now() - t0, authenticated: auth !== undefined }, 'image resolved and recorded');
    return { imageRef: rec.id };
  }

  listImages(req: ListImagesRequest): ListImagesResponse {
    const wanted = req.filter?.image?.image;
    if (wanted) {
      const r = findImage(this.o.store, wanted, 'filter.image.image');
      return { images: r ? [toCriImage(r)] : [] };
    }
    return { images: this.o.store.list().map(toCriImage) };
  }

  imageStatus(req: ImageStatusRequest): ImageStatusResponse {
    const r = findImage(this.o.store, req.image?.image ?? '', 'image.image');
    if (!r) return { image: undefined, info: {} };
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.info = JSON.stringify({
        imageSpec: r.config,
        manifestDigest: r.manifestDigest,
        manifestMediaType: r.manifestMediaType,
        platform: r.platform,
        layers: r.layers,
        pulledAt: r.pulledAt,
        layersOnNode: false,
        note: 'cello-cri records the manifest and config only; each cell pulls the layers when a pod starts on it',
      });
    }
    return { image: toCriImage(r), info };
  }

  async removeImage(req: RemoveImageRequest): Promise<RemoveImageResponse> {
    const r = findImage(this.o.store, req.image?.image ?? '', 'image.image');
    // Idempotent, as the CRI asks: removing an image that is not there is not an error.
    if (r) {
      await this.o.store.remove(r.id);
      this.o.logger.info({ id: r.id, names: [...r.repoTags, ...r.repoDigests] }, 'image removed');
    }
    return {};
  }

  imageFsInfo(_req: ImageFsInfoRequest): ImageFsInfoResponse {
    const u = this.o.store.usage();
    const now = BigInt(Date.now()) * 1_000_000n;
    return {
      imageFilesystems: [{ timestamp: now, fsId: { mountpoint: this.o.store.directory }, usedBytes: { value: BigInt(u.bytes) }, inodesUsed: { value: BigInt(u.inodes) } }],
      containerFilesystems: [],
    };
  }
}
