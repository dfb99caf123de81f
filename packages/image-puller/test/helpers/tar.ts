import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import type { RawLayer } from '@cello/testkit';

export interface Entry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'fifo' | 'character-device' | 'block-device';
  devmajor?: number;
  devminor?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  mode?: number;
  content?: string | Buffer;
  size?: number;
  /** PAX records, e.g. `SCHILY.xattr.user.k` for an extended attribute. */
  pax?: Record<string, string>;
}

/** A tar archive (in memory) from entries, written verbatim: hostile names included. */
export async function makeTar(entries: Entry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const content = typeof e.content === 'string' ? Buffer.from(e.content) : e.content;
    const type = e.type ?? 'file';
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        {
          name: e.name,
          type,
          mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
          mtime: new Date(1700000000000),
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          devmajor: e.devmajor ?? 0,
          devminor: e.devminor ?? 0,
          ...(e.linkname ? { linkname: e.linkname } : {}),
          ...(e.size !== undefined ? { size: e.size } : {}),
          ...(e.pax ? { pax: e.pax } : {}),
        },
        type === 'file' ? (content ?? Buffer.alloc(0)) : Buffer.alloc(0),
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

export function gzipLayer(tar: Buffer): RawLayer {
  return { blob: gzipSync(tar), diffId: sha256(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
}

export function plainLayer(tar: Buffer): RawLayer {
  return { blob: tar, diffId: sha256(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar' };
}
