// Images that are already unpacked on the cell, by reference: for cells baked with their
// images, and for the agent's own tests of the runtime before a registry is involved. A
// directory image is one layer (its rootfs) plus the config given when it was added.
import type { ImageConfig, ImageInfo, ImageService } from './image-service.js';
import { ImagePullFailure } from './image-service.js';

export class DirImageService implements ImageService {
  private readonly images = new Map<string, ImageInfo>();

  add(ref: string, rootfs: string, config: Partial<ImageConfig> = {}): void {
    this.images.set(ref, {
      ref,
      digest: `dir:${rootfs}`,
      layerDirs: [rootfs],
      config: { entrypoint: [], cmd: [], env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], workingDir: '', user: '', stopSignal: '', ...config },
    });
  }

  async cached(ref: string): Promise<ImageInfo | undefined> {
    return this.images.get(ref);
  }

  async pull(ref: string): Promise<ImageInfo> {
    const i = this.images.get(ref);
    if (!i) throw new ImagePullFailure(`image ${ref} is not among the cell's local images`, 'not-found');
    return i;
  }
}
