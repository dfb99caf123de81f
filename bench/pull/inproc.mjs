// Times ImagePuller.pull() inside one process, as the cell agent calls it (no process start-up):
//   node inproc.mjs CACHE REF  -> prints {"seconds": S, "fetchedLayers": N, "unpackedLayers": M}
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
const here = dirname(fileURLToPath(import.meta.url));
const { ImagePuller } = await import(join(here, '..', '..', 'packages', 'image-puller', 'dist', 'index.js'));
const [cache, ref] = process.argv.slice(2);
const puller = new ImagePuller({ root: cache, plainHttp: [ref.split('/')[0]] });
const t0 = process.hrtime.bigint();
const { stats } = await puller.pullWithStats(ref);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
await puller.close();
process.stdout.write(`${JSON.stringify({ seconds, fetchedLayers: stats.fetchedLayers, unpackedLayers: stats.unpackedLayers })}\n`);
