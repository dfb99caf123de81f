// The scheduling step that asks the registries: the platforms of each of the pod's images (with
// its credentials when it has them), combined with its node selector and the provider's cell
// images into the architectures its cell may have (selection/architectures.ts).
import type { PodObject } from '@cello/proto/controller';
import { allowedArchitectures, podImages, type Arch } from '../selection/architectures.js';
import type { ImagePlatforms } from '../selection/image-platforms.js';
import { SelectionError } from '../selection/selection.js';
import { CelloError } from '../errors.js';
import type { ReconcileContext } from './context.js';

/** Throws SelectionError when no architecture fits, ImagePlatformsUnknown when a registry could not tell. */
export async function podArchitectures(ctx: ReconcileContext, pod: PodObject): Promise<Arch[]> {
  const { o } = ctx;
  const provider = o.provider.architectures ? await o.provider.architectures() : [...new Set(ctx.types().map((t) => t.arch))];
  let images: Map<string, ImagePlatforms> | undefined;
  if (o.imagePlatforms) {
    const reader = o.imagePlatforms;
    const credentials = await o.registryCredentials?.(pod);
    const list = podImages(pod.spec!);
    try {
      const read = await Promise.all(list.map((image) => reader.platformsOf(image, credentials)));
      images = new Map(list.map((image, i) => [image, read[i]!]));
    } catch (err) {
      if (err instanceof CelloError && err.code === 'InvalidArgument') throw new SelectionError(err.message, 'InvalidImageReference');
      throw err;
    }
  }
  return allowedArchitectures({ spec: pod.spec!, provider, ...(images ? { images } : {}) });
}
