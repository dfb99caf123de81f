// Runs the upstream Kubernetes e2e suite (e2e.test v1.34.4) with Cello's virtual node as the
// cluster's only node. Driven by `npm run conformance` (scripts/conformance.mjs), which passes
// the focus, skip, time budget and report directory in the environment and summarizes the
// JUnit report this writes.
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runE2e, startConformanceCluster, type ConformanceCluster } from '../helpers/conformance.js';

const env = process.env;
function required(name: string): string {
  const v = env[name];
  if (!v) throw new Error(`${name} is not set: run this through \`npm run conformance\``);
  return v;
}
const dir = required('CONFORMANCE_DIR');
const timeoutMinutes = Number(required('CONFORMANCE_TIMEOUT_MINUTES'));
const maxCells = Number(env.CONFORMANCE_MAX_CELLS ?? '40');
const procs = Number(env.CONFORMANCE_PROCS ?? '1');

let cluster: ConformanceCluster | undefined;

beforeAll(async () => {
  cluster = await startConformanceCluster({ maxCells, dir });
});

afterAll(async () => {
  await cluster?.stop();
});

it('runs the e2e suite and writes its JUnit report', async () => {
  const r = await runE2e(cluster!, { dir, focus: required('CONFORMANCE_FOCUS'), skip: env.CONFORMANCE_SKIP, timeoutMinutes, procs, echo: true });
  // Failed specs are the report's business (the summary counts them); no report at all is not.
  expect(existsSync(r.junit), `e2e.test exited ${r.code} without a JUnit report; see ${r.log}`).toBe(true);
});
