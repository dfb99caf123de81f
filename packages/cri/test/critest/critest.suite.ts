// `npm run critest` (scripts/critest.mjs) only: the whole critest v1.34.0 suite, unmodified,
// against the real cello-cri CLI backed by a real controller (local provider: real cell agents,
// real runc) and a local registry seeded with every image critest pulls, under the names it pulls
// them by (registry.k8s.io and gcr.io rewritten to it, for the shim and for the cells). The specs
// in not-applicable.ts are skipped with their reason; everything else runs and counts. The
// script summarizes the JSON report this writes. Never part of `npm test` (tens of minutes).
import { execFile } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { criTools, pushPause, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startShim, type Shim } from '../shim.js';
import { startController, type TestController } from '../controller.js';
import { pushCritestImages } from './images.js';
import { NOT_APPLICABLE, skipPattern } from './not-applicable.js';

const dir = process.env.CRITEST_DIR;
if (!dir) throw new Error('CRITEST_DIR is not set: run this through `npm run critest`');
const focus = process.env.CRITEST_FOCUS;
const extraSkip = process.env.CRITEST_SKIP;
const timeoutMinutes = Number(process.env.CRITEST_TIMEOUT_MINUTES ?? '90');

let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let critest: string;

beforeAll(async () => {
  critest = criTools().critest;
  registry = await startRegistry();
  await pushCritestImages(registry);
  const pause = await pushPause(registry);
  const registries = {
    'registry.k8s.io': { rewrite: { host: registry.host } },
    'gcr.io': { rewrite: { host: registry.host } },
    [registry.host]: { plainHttp: true },
  };
  controller = await startController({ insecureRegistries: [registry.host], registries });
  const cfg = join(dir, 'shim-registries.yaml');
  writeFileSync(
    cfg,
    `registries:\n  registry.k8s.io: {rewrite: {host: "${registry.host}"}}\n  gcr.io: {rewrite: {host: "${registry.host}"}}\n  "${registry.host}": {plainHttp: true}\n`,
  );
  shim = await startShim(['--registry-config', cfg, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause]);
}, 30 * 60_000);

afterAll(async () => {
  if (shim) writeFileSync(join(dir, 'shim.log'), shim.logs());
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
}, 300_000);

it('runs critest and writes its report', async () => {
  const report = join(dir, 'critest.json');
  // For the summary's reasons (scripts/critest.mjs reads it).
  writeFileSync(join(dir, 'not-applicable.json'), JSON.stringify(NOT_APPLICABLE, null, 2));
  const skip = [skipPattern(Object.keys(NOT_APPLICABLE)), ...(extraSkip ? [extraSkip] : [])].join('|');
  const args = [
    `--runtime-endpoint=unix://${shim.socket}`,
    `--image-endpoint=unix://${shim.socket}`,
    ...(focus ? [`--ginkgo.focus=${focus}`] : []),
    `--ginkgo.skip=${skip}`,
    `--ginkgo.json-report=${report}`,
    '--ginkgo.no-color',
    `--ginkgo.timeout=${timeoutMinutes}m`,
  ];
  const out = await new Promise<string>((resolve) => {
    execFile(critest, args, { cwd: dir, timeout: (timeoutMinutes + 5) * 60_000, maxBuffer: 256 << 20 }, (_err, stdout, stderr) => resolve(stdout + stderr));
  });
  writeFileSync(join(dir, 'critest.log'), out);
  // Failed specs are the report's business (the script counts them); no report at all is not.
  expect(existsSync(report), `critest wrote no report; its output:\n${out.slice(-4000)}`).toBe(true);
});
