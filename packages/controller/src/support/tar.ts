// The support bundle's archive: regular files, one mode and one time, packed by tar-stream (long
// names go in PAX headers) and gzip-compressed.
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import tarStream from 'tar-stream';

export interface TarEntry {
  name: string;
  data: Buffer | string;
}

const gzipAsync = promisify(gzip);

/** The entries as a gzip-compressed tar archive. */
export async function tarGz(entries: readonly TarEntry[], mtime = Math.floor(Date.now() / 1000)): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : e.data;
    await new Promise<void>((resolve, reject) =>
      pack.entry({ name: e.name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: new Date(mtime * 1000) }, data, (err) => (err ? reject(err) : resolve())),
    );
  }
  pack.finalize();
  await done;
  return gzipAsync(Buffer.concat(chunks));
}
