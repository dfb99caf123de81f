// The node's record of pulled images: one JSON file per image ID under DIR/images, written
// atomically (temporary file, fsync, rename), so a crash leaves either the old record or the new
// one. Names behave as on containerd: a tag names one image at a time and moves to the image a
// newer pull resolved it to; a repo digest (`repo@sha256:…`) stays with its image. Mutations are
// serialized; reads are from memory.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { CelloError } from '@cello/proto';

const DIGEST = /^sha256:[a-f0-9]{64}$/;

const recordSchema = z.strictObject({
  version: z.literal(1),
  /** The config digest: the image's identity, as on containerd and Docker. */
  id: z.string().regex(DIGEST),
  repoTags: z.array(z.string()),
  repoDigests: z.array(z.string()),
  /** Bytes a pull fetches for this node's platform (manifest, config, compressed layers). */
  size: z.number().int().nonnegative(),
  /** The config's User, as the image says it (`uid`, `name`, `uid:gid`, `name:group`). */
  user: z.string(),
  manifestDigest: z.string().regex(DIGEST),
  manifestMediaType: z.string(),
  platform: z.strictObject({ os: z.string(), architecture: z.string(), variant: z.string().optional() }),
  layers: z.array(z.strictObject({ digest: z.string(), mediaType: z.string(), size: z.number(), diffId: z.string() })),
  /** The config blob, verified against `id` when it was pulled (ImageStatus verbose shows it). */
  config: z.unknown(),
  pulledAt: z.string(),
  /** ImageSpec.annotations of the latest pull (containerd keeps them with the image and returns them in Image.spec). */
  annotations: z.record(z.string(), z.string()),
});

export type ImageRecord = z.infer<typeof recordSchema>;

export class ImageStore {
  private readonly dir: string;
  private readonly byId = new Map<string, ImageRecord>();
  private chain: Promise<unknown> = Promise.resolve();

  /** Reads every record under `stateDir/images`; a record that does not parse fails the start, naming its file. */
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'images');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const f of readdirSync(this.dir)) {
      const path = join(this.dir, f);
      if (f.endsWith('.tmp')) {
        rmSync(path, { force: true }); // an interrupted write: the rename never happened
        continue;
      }
      if (!f.endsWith('.json')) continue;
      let rec: ImageRecord;
      try {
        rec = recordSchema.parse(JSON.parse(readFileSync(path, 'utf8')));
      } catch (err) {
        throw new CelloError('FailedPrecondition', `image record ${path} is not valid (${(err as Error).message.slice(0, 200)}): remove it and pull the image again`);
      }
      if (`${rec.id.slice('sha256:'.length)}.json` !== f)
        throw new CelloError('FailedPrecondition', `image record ${path} holds image ${rec.id}: its file name must be that ID's hex`);
      this.byId.set(rec.id, rec);
    }
  }

  list(): ImageRecord[] {
    return [...this.byId.values()].sort((a, b) => a.pulledAt.localeCompare(b.pulledAt) || a.id.localeCompare(b.id));
  }

  get(id: string): ImageRecord | undefined {
    return this.byId.get(id);
  }

  /** The image one of these names (normalised references) names, if any. */
  byName(name: string): ImageRecord | undefined {
    for (const r of this.byId.values()) if (r.repoTags.includes(name) || r.repoDigests.includes(name)) return r;
    return undefined;
  }

  /** Images whose ID starts with `hex` (lowercase hex, without `sha256:`). */
  byIdPrefix(hex: string): ImageRecord[] {
    return [...this.byId.values()].filter((r) => r.id.startsWith(`sha256:${hex}`));
  }

  /**
   * Records `image` (or refreshes it) with `tag` and `repoDigest` among its names: the tag moves
   * off any other image that held it. Returns the stored record.
   */
  add(image: Omit<ImageRecord, 'repoTags' | 'repoDigests' | 'version'>, names: { tag?: string; repoDigest: string }): Promise<ImageRecord> {
    return this.serialized(async () => {
      if (names.tag) {
        for (const other of this.byId.values()) {
          if (other.id !== image.id && other.repoTags.includes(names.tag)) await this.write({ ...other, repoTags: other.repoTags.filter((t) => t !== names.tag) });
        }
      }
      const prev = this.byId.get(image.id);
      const repoTags = [...(prev?.repoTags ?? [])];
      if (names.tag && !repoTags.includes(names.tag)) repoTags.push(names.tag);
      const repoDigests = [...(prev?.repoDigests ?? [])];
      if (!repoDigests.includes(names.repoDigest)) repoDigests.push(names.repoDigest);
      const rec: ImageRecord = { version: 1, ...image, repoTags: repoTags.sort(), repoDigests: repoDigests.sort() };
      await this.write(rec);
      return rec;
    });
  }

  /** Forgets the image and every name of it; false when it was not there. */
  remove(id: string): Promise<boolean> {
    return this.serialized(async () => {
      if (!this.byId.has(id)) return false;
      await rm(this.file(id), { force: true });
      this.byId.delete(id);
      return true;
    });
  }

  /** Bytes and files the records take (ImageFsInfo: this node keeps records, the cells keep layers). */
  usage(): { bytes: number; inodes: number } {
    let bytes = 0;
    let inodes = 1; // the directory itself
    for (const f of readdirSync(this.dir)) {
      try {
        bytes += statSync(join(this.dir, f)).size;
        inodes++;
      } catch {
        /* removed meanwhile */
      }
    }
    return { bytes, inodes };
  }

  get directory(): string {
    return this.dir;
  }

  private file(id: string): string {
    return join(this.dir, `${id.slice('sha256:'.length)}.json`);
  }

  private async write(rec: ImageRecord): Promise<void> {
    const target = this.file(rec.id);
    const tmp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(rec, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    this.byId.set(rec.id, rec);
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }
}
