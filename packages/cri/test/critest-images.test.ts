// critest v1.34.0 (the CRI validation suite the Kubernetes project runs against containerd and
// CRI-O), its image manager specs, against the real cello-cri CLI. Its images are named
// gcr.io/k8s-staging-cri-tools/*; the shim's registries configuration rewrites gcr.io to a local
// registry seeded with images of the same names and the properties each spec checks (users,
// distinct and shared IDs), so the specs run unmodified and offline.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { criTools, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startShim, type Shim } from './shim.js';
import { pushCriToolsTestImages } from './critest/images.js';
import { NOT_APPLICABLE } from './critest/not-applicable.js';

/** Specs this run leaves out, each with its reason (critest/not-applicable.ts: the digest-pinned image). */
const DIGEST_SPEC = 'public image with digest should be pulled and removed [Conformance]';
const SKIPPED: Record<string, string> = { [DIGEST_SPEC]: NOT_APPLICABLE[DIGEST_SPEC]! };

let registry: RegistryServer;
let shim: Shim;
let dir: string;
let critest: string;

beforeAll(async () => {
  critest = criTools().critest;
  registry = await startRegistry();
  await pushCriToolsTestImages(registry);
  dir = mkdtempSync(join(tmpdir(), 'cello-critest-'));
  const cfg = join(dir, 'registries.yaml');
  writeFileSync(cfg, `registries:\n  gcr.io: {rewrite: {host: "${registry.host}"}}\n  "${registry.host}": {plainHttp: true}\n`);
  shim = await startShim(['--registry-config', cfg]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await registry?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface SpecReport {
  LeafNodeText: string;
  LeafNodeType: string;
  State: string;
  Failure?: { Message: string };
}

it(
  'critest: the Image Manager specs pass (the digest-pinned one skipped, for the reason above)',
  async () => {
    const report = join(dir, 'critest.json');
    const skip = Object.keys(SKIPPED).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    const args = [
      `--runtime-endpoint=unix://${shim.socket}`,
      `--image-endpoint=unix://${shim.socket}`,
      '--ginkgo.focus=Image Manager',
      `--ginkgo.skip=${skip.join('|')}`,
      `--ginkgo.json-report=${report}`,
      '--ginkgo.no-color',
      '--ginkgo.timeout=5m',
    ];
    const run = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile(critest, args, { cwd: dir, timeout: 6 * 60_000, maxBuffer: 32 << 20 }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, out: stdout + stderr }),
      );
    });
    const specs = (JSON.parse(readFileSync(report, 'utf8')) as { SpecReports: SpecReport[] }[])[0]!.SpecReports.filter((s) => s.LeafNodeType === 'It');
    const imageSpecs = specs.filter((s) => s.State !== 'skipped' || Object.keys(SKIPPED).includes(s.LeafNodeText));
    const failed = imageSpecs.filter((s) => s.State !== 'passed' && s.State !== 'skipped').map((s) => `${s.LeafNodeText}: ${s.Failure?.Message ?? s.State}`);
    expect(failed, run.out.slice(-4000)).toEqual([]);
    const passed = imageSpecs.filter((s) => s.State === 'passed').map((s) => s.LeafNodeText);
    expect(passed.sort()).toEqual(
      [
        'public image with tag should be pulled and removed [Conformance]',
        'public image should timeout if requested [Conformance]',
        'public image without tag should be pulled and removed [Conformance]',
        'image status should support all kinds of references [Conformance]',
        'image status get image fields should not have Uid|Username empty [Conformance]',
        'listImage should get exactly 3 image in the result list [Conformance]',
        'listImage should get exactly 3 repoTags in the result image [Conformance]',
      ].sort(),
    );
    expect(imageSpecs.filter((s) => s.State === 'skipped').map((s) => s.LeafNodeText)).toEqual(Object.keys(SKIPPED));
    expect(run.code, run.out.slice(-4000)).toBe(0);
  },
  7 * 60_000,
);
