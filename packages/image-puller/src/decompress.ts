import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { PullError } from './errors.js';
import type { Compression } from './media.js';

/** The first bytes of a stream, pushed back so the stream still starts at byte 0. */
async function peek(src: Readable, n: number): Promise<Buffer> {
  for (;;) {
    const chunk = src.read() as Buffer | null;
    if (chunk !== null) {
      src.unshift(chunk);
      return chunk.subarray(0, n);
    }
    if (src.readableEnded || src.destroyed) return Buffer.alloc(0);
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        src.off('readable', done);
        src.off('end', done);
        src.off('error', fail);
        resolve();
      };
      const fail = (e: Error): void => {
        src.off('readable', done);
        src.off('end', done);
        reject(e);
      };
      src.once('readable', done);
      src.once('end', done);
      src.once('error', fail);
    });
  }
}

function detect(b: Buffer): Compression {
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

export interface Decompressed {
  stream: Readable;
  /** Resolves when the decompressor finished cleanly (the zstd process exited 0). */
  done: () => Promise<void>;
}

/**
 * The uncompressed tar stream of a layer blob. The format comes from the magic bytes (a blob
 * must be what its media type says, unless the type says uncompressed). gzip: Node's zlib, on
 * the libuv pool beside the main thread. zstd: the `zstd` binary (Node 20 has no zstd), which
 * streams and runs on the other core.
 */
export async function decompress(src: Readable, declared: Compression): Promise<Decompressed> {
  const actual = detect(await peek(src, 4));
  if (declared !== 'none' && actual !== declared) {
    src.destroy();
    throw new PullError('integrity', `layer blob is not ${declared}-compressed`);
  }
  if (actual === 'gzip') {
    const gz = createGunzip({ chunkSize: 256 << 10 });
    src.on('error', (e) => gz.destroy(e));
    return { stream: src.pipe(gz), done: async () => undefined };
  }
  if (actual === 'zstd') {
    const child = spawn('zstd', ['-dcq', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.stdin.on('error', () => undefined); // zstd exiting early is reported through its exit code
    src.on('error', (e) => child.stdout.destroy(e));
    src.pipe(child.stdin);
    const exited = new Promise<number | null>((resolve, reject) => {
      child.on('error', (e) => reject(new PullError('unsupported', `zstd layer: cannot run zstd (${e.message}); install the zstd package`)));
      child.on('close', (code) => resolve(code));
    });
    exited.catch(() => undefined);
    // Abandoned early (the unpack failed): stop zstd. A normal end lets it exit by itself.
    child.stdout.on('close', () => {
      if (!child.stdout.readableEnded && child.exitCode === null) child.kill('SIGKILL');
    });
    return {
      stream: child.stdout,
      done: async () => {
        const code = await exited;
        if (code !== 0) throw new PullError('integrity', `zstd layer failed to decompress: ${err.trim().slice(0, 300)}`);
      },
    };
  }
  return { stream: src, done: async () => undefined };
}
