// How the kubelet names images, and how those names find a record: an image ID (full, with or
// without `sha256:`, or a unique prefix of its hex, as crictl accepts) or any reference, which is
// normalised the Docker way (`busybox` is `docker.io/library/busybox:latest`).
import { parseReference, type Reference } from '@cello/image-puller';
import { CelloError } from '@cello/proto';
import type { ImageRecord, ImageStore } from './image-store.js';

const FULL_ID = /^(?:sha256:)?([a-f0-9]{64})$/;
const ID_PREFIX = /^(?:sha256:)?([a-f0-9]{1,63})$/;

/** A reference for a pull: parsed, or an InvalidArgument naming `field`. */
export function parseImageField(image: string, field: string): Reference {
  if (!image) throw new CelloError('InvalidArgument', `${field} is required: the image reference to use, e.g. docker.io/library/busybox:1.36`);
  try {
    return parseReference(image);
  } catch (err) {
    throw new CelloError('InvalidArgument', `${field}: ${(err as Error).message}`);
  }
}

export function tagName(r: Reference): string | undefined {
  return r.tag !== undefined && r.digest === undefined ? `${r.registry}/${r.repository}:${r.tag}` : undefined;
}

export function repoDigestName(r: Reference, digest: string): string {
  return `${r.registry}/${r.repository}@${digest}`;
}

/** The record `image` names, or undefined (an ambiguous ID prefix is an error). */
export function findImage(store: ImageStore, image: string, field: string): ImageRecord | undefined {
  if (!image) throw new CelloError('InvalidArgument', `${field} is required: an image ID or reference`);
  const full = FULL_ID.exec(image);
  if (full) {
    const byId = store.get(`sha256:${full[1]}`);
    if (byId) return byId;
  }
  let ref: Reference | undefined;
  try {
    ref = parseReference(image);
  } catch {
    ref = undefined;
  }
  if (ref) {
    // `repo:tag@digest` is found by its digest, as containerd does.
    const name = ref.digest ? repoDigestName(ref, ref.digest) : tagName(ref)!;
    const byName = store.byName(name);
    if (byName) return byName;
  }
  const prefix = ID_PREFIX.exec(image);
  if (prefix) {
    const hits = store.byIdPrefix(prefix[1]!);
    if (hits.length > 1) throw new CelloError('InvalidArgument', `${field} ${JSON.stringify(image)} is an ID prefix of ${hits.length} images: give more of the ID`);
    if (hits.length === 1) return hits[0];
  }
  if (!ref && !full) throw new CelloError('InvalidArgument', `${field} ${JSON.stringify(image)} is neither an image ID nor a valid reference`);
  return undefined;
}
