import { open, rm, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { FollowReader, Progress } from './follow.js';
import type { Compression } from './media.js';
import { inflateLayer, type UnpackResult } from './unpack.js';

/**
 * A layer inflated ahead of its turn into a file. Layers of a flattened rootfs must be applied
 * one after another, but nothing stops the next one from decompressing meanwhile: inflating is
 * the longest step of a cold pull, and this puts it on another core. The file is read back (from
 * the page cache) while it is still being written, like a download in progress.
 */
export class Spool {
  private readonly progress: Progress;
  /** Settles when the layer is inflated and its DiffID verified. */
  readonly done: Promise<UnpackResult>;

  private constructor(private readonly file: string, private readonly fh: FileHandle, private readonly source: Readable, compression: Compression, diffId: string, maxBytes: number) {
    this.progress = new Progress(file);
    this.done = this.fill(compression, diffId, maxBytes);
    this.done.catch(() => undefined);
  }

  static async start(file: string, source: Readable, compression: Compression, diffId: string, maxBytes: number): Promise<Spool> {
    const fh = await open(file, 'w', 0o600);
    return new Spool(file, fh, source, compression, diffId, maxBytes);
  }

  private async fill(compression: Compression, diffId: string, maxBytes: number): Promise<UnpackResult> {
    let written = 0;
    try {
      const res = await inflateLayer(this.source, compression, diffId, maxBytes, async (chunk) => {
        for (let off = 0; off < chunk.length;) off += (await this.fh.write(chunk, off, chunk.length - off)).bytesWritten;
        written += chunk.length;
        this.progress.update(written);
      });
      this.progress.finish();
      return res;
    } catch (err) {
      this.progress.finish(err);
      throw err;
    } finally {
      await this.fh.close();
    }
  }

  /** The tar bytes, from the start, as they are inflated; fails if inflating fails. */
  reader(): Readable {
    return new FollowReader(this.progress);
  }

  /** Stops inflating if it still runs, and removes the file. */
  async dispose(): Promise<void> {
    // With an error: a source destroyed quietly would leave the inflater waiting for its end.
    this.source.destroy(new Error('spool disposed'));
    await this.done.catch(() => undefined);
    await rm(this.file, { force: true });
  }
}
