import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { CHUNK } from './decompress.js';
import { PullError } from './errors.js';

/** A download in progress in this process: how far its temp file is written. */
export class Progress {
  written = 0;
  finished = false;
  error: unknown;
  private waiters: (() => void)[] = [];

  constructor(readonly file: string) {}

  update(written: number): void {
    // A transfer that restarted from zero (server ignored Range) invalidates what readers saw.
    if (written < this.written) this.error ??= new PullError('network', 'download restarted from zero');
    this.written = written;
    this.wake();
  }

  finish(error?: unknown): void {
    this.finished = true;
    if (error !== undefined) this.error = error;
    this.wake();
  }

  next(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/**
 * Reads a file while it is being downloaded (like `tail -f`), so a layer unpacks as its bytes
 * arrive; ends when the download finishes, fails if it fails.
 */
export class FollowReader extends Readable {
  private fh: FileHandle | undefined;
  private pos = 0;

  constructor(private readonly p: Progress) {
    super({ highWaterMark: CHUNK });
  }

  override _read(): void {
    this.pump().catch((e: unknown) => this.destroy(e as Error));
  }

  private async pump(): Promise<void> {
    this.fh ??= await open(this.p.file, 'r');
    for (;;) {
      if (this.p.error !== undefined) throw this.p.error as Error;
      if (this.pos < this.p.written) {
        const len = Math.min(CHUNK, this.p.written - this.pos);
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await this.fh.read(buf, 0, len, this.pos);
        if (bytesRead === 0) throw new PullError('network', 'download file shrank while being read');
        this.pos += bytesRead;
        this.push(bytesRead === len ? buf : buf.subarray(0, bytesRead));
        return;
      }
      if (this.p.finished) {
        this.push(null);
        return;
      }
      await this.p.next();
    }
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    const fh = this.fh;
    this.fh = undefined;
    if (fh)
      fh.close().then(
        () => cb(err),
        () => cb(err),
      );
    else cb(err);
  }
}
