// The cell image: a fixed AMI, or the newest available image whose name matches a filter from
// given owners (so publishing a new image rolls it out to new cells). Resolved per
// architecture and cached for a few minutes: launches must not pay a DescribeImages each.
import { DescribeImagesCommand, type EC2Client, type Image } from '@aws-sdk/client-ec2';
import type { AwsProviderConfig } from './config.js';

export interface ResolvedImage {
  imageId: string;
  rootDeviceName: string;
  name?: string;
}

const EC2_ARCH = { amd64: 'x86_64', arm64: 'arm64' } as const;

export class ImageResolver {
  private readonly cache = new Map<string, { at: number; image: Promise<ResolvedImage> }>();
  constructor(
    private readonly ec2: EC2Client,
    private readonly spec: AwsProviderConfig['image'],
    private readonly ttlMs = 10 * 60_000,
  ) {}

  resolve(arch: 'amd64' | 'arm64'): Promise<ResolvedImage> {
    const hit = this.cache.get(arch);
    if (hit && Date.now() - hit.at < this.ttlMs) return hit.image;
    const image = this.lookup(arch);
    this.cache.set(arch, { at: Date.now(), image });
    // A failed lookup must not be cached: the next launch asks again.
    image.catch(() => this.cache.delete(arch));
    return image;
  }

  private async lookup(arch: 'amd64' | 'arm64'): Promise<ResolvedImage> {
    let images: Image[];
    if ('id' in this.spec) {
      const r = await this.ec2.send(new DescribeImagesCommand({ ImageIds: [this.spec.id] }));
      images = r.Images ?? [];
      if (images.length === 0) throw new Error(`providers.aws.image.id: image ${this.spec.id} not found`);
      const a = images[0]!.Architecture;
      if (a && a !== EC2_ARCH[arch]) {
        throw new Error(`providers.aws.image.id: image ${this.spec.id} is ${a}, the instance type needs ${EC2_ARCH[arch]}`);
      }
    } else {
      const r = await this.ec2.send(
        new DescribeImagesCommand({
          Owners: this.spec.owners,
          Filters: [
            { Name: 'name', Values: [this.spec.name] },
            { Name: 'state', Values: ['available'] },
          ],
        }),
      );
      // Architecture is checked here rather than with a server-side filter: EC2-compatible
      // APIs (and moto) do not all record it; an image that does not say is taken as fitting.
      images = (r.Images ?? []).filter((i) => !i.Architecture || i.Architecture === EC2_ARCH[arch]).sort((a, b) => (b.CreationDate ?? '').localeCompare(a.CreationDate ?? ''));
      if (images.length === 0) {
        throw new Error(`providers.aws.image.name: no available ${EC2_ARCH[arch]} image named "${this.spec.name}" owned by ${this.spec.owners.join(', ')}`);
      }
    }
    const img = images[0]!;
    return {
      imageId: img.ImageId!,
      rootDeviceName: img.RootDeviceName ?? '/dev/xvda',
      ...(img.Name ? { name: img.Name } : {}),
    };
  }
}
