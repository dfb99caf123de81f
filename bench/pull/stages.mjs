// The stages of a cold image-puller pull, one at a time, in one process (run by run.mjs):
//   node stages.mjs REGISTRY_CONFIG REF DIR  -> prints {"fetch": {wall, cpu}, "inflate": ..., "parse": ..., "unpack": ..., "blobs": [...]}
// fetch:   manifest, config and every layer blob over the wire (TLS handshakes included), 4 at
//          a time as the puller does, verified, into DIR/blobs (the page cache is dropped first
//          by the caller).
// inflate: every blob through the puller's decompress(), bytes discarded.
// parse:   the same plus the puller's TarParser with a sink that does nothing.
// unpack:  unpackLayer() of every layer onto DIR/rootfs, in order: inflate, parse and file creation.
// The puller overlaps fetching with unpacking, so a real pull takes less than the sum; the
// stages say where the time goes, against the same stages done by zcat, tar and curl.
import { createReadStream, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', '..', 'packages', 'image-puller', 'dist');
const { createRegistryReader, loadRegistryConfig, parseReference } = await import(join(dist, 'index.js'));
const { decompress, CHUNK } = await import(join(dist, 'decompress.js'));
const { TarParser } = await import(join(dist, 'tar.js'));
const { unpackLayer, TreeState, UnpackBudget } = await import(join(dist, 'unpack.js'));

const [configFile, ref, dir] = process.argv.slice(2);
const blobsDir = join(dir, 'blobs');
mkdirSync(blobsDir, { recursive: true });
// Wall and CPU (user+system of every thread: zlib inflates on the libuv pool) of a stage. Under
// load the CPU seconds are the steadier figure.
let t0;
let c0;
const start = () => {
  t0 = process.hrtime.bigint();
  c0 = process.cpuUsage();
};
const stop = () => {
  const c = process.cpuUsage(c0);
  return { wall: Number(process.hrtime.bigint() - t0) / 1e9, cpu: (c.user + c.system) / 1e6 };
};

start();
const reader = createRegistryReader(loadRegistryConfig(configFile));
const { source } = reader.open(ref);
const m = await source.getManifest(parseReference(ref).tag);
const manifest = JSON.parse(m.bytes.toString('utf8'));
await source.getBlob(manifest.config.digest);
const layers = manifest.layers.map((l) => ({ digest: l.digest, size: l.size, file: join(blobsDir, l.digest.slice(7)) }));
const queue = [...layers];
await Promise.all(
  Array.from({ length: 4 }, async () => {
    for (let l = queue.shift(); l; l = queue.shift()) await source.fetchBlobToFile(l.digest, l.size, l.file);
  }),
);
const fetch = stop();
await reader.close();

async function drain(stream, onChunk) {
  for await (const c of stream) onChunk?.(c);
}

start();
for (const l of layers) {
  const d = await decompress(createReadStream(l.file, { highWaterMark: CHUNK }), 'gzip');
  await drain(d.stream);
}
const inflate = stop();

start();
let entries = 0;
for (const l of layers) {
  const d = await decompress(createReadStream(l.file, { highWaterMark: CHUNK }), 'gzip');
  const parser = new TarParser({ entry: () => void entries++, data: () => undefined, end: () => undefined });
  for await (const c of d.stream) await parser.write(c);
  parser.finish();
}
const parse = stop();

start();
const rootfs = join(dir, 'rootfs');
mkdirSync(rootfs);
const state = TreeState.forDir(rootfs);
const budget = new UnpackBudget(64 * 2 ** 30, 2_000_000);
for (const l of layers) {
  await unpackLayer(createReadStream(l.file, { highWaterMark: CHUNK }), 'gzip', undefined, { dir: rootfs, mode: 'apply', state, maxBytes: 32 * 2 ** 30, budget });
}
const unpack = stop();

process.stdout.write(`${JSON.stringify({ fetch, inflate, parse, unpack, entries, blobs: layers.map((l) => l.file) })}\n`);
