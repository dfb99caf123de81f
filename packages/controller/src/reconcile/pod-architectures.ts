// The scheduling step that asks the registries: the platforms of each of the pod's images (with
// its credentials when it has them), combined with its node selector and the provider's cell
// images into the architectures its cell may have (selection/architectures.ts).
import type { PodObject } from '@cello/proto/controller';
import { allowedArchitectures, podImages, type Arch } from '../selection/architectures.js';
import { ImageUnreadable, type ImagePlatforms } from '../selection/image-platforms.js';
import { SelectionError } from '../selection/selection.js';
import { CelloError } from '../errors.js';
import type { ReconcileContext } from './context.js';
import { authByRegistry, podPull } from './pull-auth.js';

/** Throws SelectionError when no architecture fits, ImagePlatformsUnknown when a registry could not tell. */
export async function podArchitectures(ctx: ReconcileContext, key: string, pod: PodObject): Promise<Arch[]> {
  const { o } = ctx;
  const provider = o.provider.architectures ? await o.provider.architectures() : [...new Set(ctx.types().map((t) => t.arch))];
  let images: Map<string, ImagePlatforms> | undefined;
  if (o.imagePlatforms) {
    const reader = o.imagePlatforms;
    const rec = ctx.cache.pods.get(key)?.rec;
    const credentials = rec ? authByRegistry((await podPull(ctx, key, rec, pod.spec)).pull.credentials) : undefined;
    const list = podImages(pod.spec!);
    try {
      // An image the registry refuses or does not have is left to the cell's pull to report.
      const read = await Promise.all(
        list.map((image) => reader.platformsOf(image, credentials).catch((err: unknown) => (err instanceof ImageUnreadable ? undefined : Promise.reject(err)))),
      );
      images = new Map(list.flatMap((image, i) => (read[i] ? [[image, read[i]] as const] : [])));
    } catch (err) {
      if (err instanceof CelloError && err.code === 'InvalidArgument') throw new SelectionError(err.message, 'InvalidImageReference');
      throw err;
    }
  }
  return allowedArchitectures({ spec: pod.spec!, provider, ...(images ? { images } : {}) });
}
