// critest v1.34.0, unmodified, its basic PodSandbox and Container specs, its log specs and its
// streaming specs (over SPDY, then again over WebSocket) against the real
// cello-cri CLI backed by a real controller with the local provider (real cell-agent processes,
// real runc). critest's container image is registry.k8s.io/e2e-test-images/busybox:1.29-2; the
// shim's and the cells' registries configuration rewrite registry.k8s.io to a local registry
// seeded with the busybox fixture (plus the pgrep one spec runs) under that name, and a web server
// under critest's nginx name, so the specs run offline.
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { criTools, pushPause, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';
import { pushCritestImages } from './critest/images.js';
import { NOT_APPLICABLE } from './critest/not-applicable.js';

const FOCUS = [
  'runtime should support basic operations on PodSandbox',
  'runtime should support basic operations on container',
  'runtime should support log',
  'runtime should support streaming interfaces',
];

/** Specs under the focus that this run leaves out, each with its reason. */
const HOST_NETWORK_PORTFORWARD = 'runtime should support portforward in host network';
const SKIPPED: Record<string, string> = { [HOST_NETWORK_PORTFORWARD]: NOT_APPLICABLE[HOST_NETWORK_PORTFORWARD]! };

/** critest's streaming specs (exec, exec with a tty, attach, port-forward). */
const STREAMING = [
  'runtime should support exec with tty=false and stdin=false [Conformance]',
  'runtime should support exec with tty=true and stdin=true [Conformance]',
  'runtime should support attach [Conformance]',
  'runtime should support portforward [Conformance]',
];

/** What passes today (the test fails if one of these stops passing, or if another spec starts to without being listed). */
const PASSING = [
  'runtime should support running PodSandbox [Conformance]',
  'runtime should support stopping PodSandbox [Conformance]',
  'runtime should support removing PodSandbox [Conformance]',
  'runtime should support creating container [Conformance]',
  'runtime should support starting container [Conformance]',
  'runtime should support stopping container [Conformance]',
  'runtime should support removing created container [Conformance]',
  'runtime should support removing running container [Conformance]',
  'runtime should support removing stopped container [Conformance]',
  'runtime should support execSync [Conformance]',
  'runtime should support execSync with timeout [Conformance]',
  'runtime should support starting container with log [Conformance]',
  'runtime should support reopening container log [Conformance]',
  'runtime should support listing container stats [Conformance]',
  'runtime should support listing stats for started containers [Conformance]',
  'runtime should support listing stats for started containers when filter is nil [Conformance]',
  'runtime should support listing stats for three created containers when filter is nil. [Conformance]',
  'runtime should support listing stats for containers filtered by labels [Conformance]',
  ...STREAMING,
];

let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let critest: string;

beforeAll(async () => {
  critest = criTools().critest;
  registry = await startRegistry();
  await pushCritestImages(registry);
  const pause = await pushPause(registry);
  const registries = { 'registry.k8s.io': { rewrite: { host: registry.host } }, [registry.host]: { plainHttp: true } };
  controller = await startController({ insecureRegistries: [registry.host], registries });
  const cfg = join(controller.cellsRoot, '..', 'shim-registries.yaml');
  writeFileSync(cfg, `registries:\n  registry.k8s.io: {rewrite: {host: "${registry.host}"}}\n  "${registry.host}": {plainHttp: true}\n`);
  shim = await startShim(['--registry-config', cfg, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await controller?.stop();
  await registry?.stop();
}, 120_000);

interface SpecReport {
  LeafNodeText: string;
  LeafNodeType: string;
  State: string;
  Failure?: { Message: string };
}

async function critestRun(name: string, focus: string[], skipped: Record<string, string>, passing: string[], extra: string[] = []): Promise<void> {
  const report = join(shim.dir, `${name}.json`);
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const args = [
    `--runtime-endpoint=unix://${shim.socket}`,
    `--image-endpoint=unix://${shim.socket}`,
    `--ginkgo.focus=${focus.map(esc).join('|')}`,
    // An empty skip pattern would match every spec.
    ...(Object.keys(skipped).length ? [`--ginkgo.skip=${Object.keys(skipped).map(esc).join('|')}`] : []),
    `--ginkgo.json-report=${report}`,
    '--ginkgo.no-color',
    '--ginkgo.timeout=20m',
    ...extra,
  ];
  const run = await new Promise<{ code: number; out: string }>((resolve) => {
    execFile(critest, args, { cwd: shim.dir, timeout: 22 * 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, out: stdout + stderr }),
    );
  });
  const specs = (JSON.parse(readFileSync(report, 'utf8')) as { SpecReports: SpecReport[] }[])[0]!.SpecReports.filter((s) => s.LeafNodeType === 'It');
  const ran = specs.filter((s) => s.State !== 'skipped' || Object.keys(skipped).includes(s.LeafNodeText));
  const summary = ran.map((s) => `${s.State.padEnd(8)} ${s.LeafNodeText}${s.Failure ? `: ${s.Failure.Message.slice(0, 300)}` : ''}`).join('\n');
  // Beside vitest's own report (a fresh clone has no such directory yet).
  mkdirSync(join(process.cwd(), '.test-results'), { recursive: true });
  writeFileSync(join(process.cwd(), '.test-results', `${name}.txt`), summary + '\n');
  const failed = ran.filter((s) => s.State !== 'passed' && s.State !== 'skipped').map((s) => `${s.LeafNodeText}: ${s.Failure?.Message ?? s.State}`);
  expect(failed, `${summary}\n${run.out.slice(-4000)}\n--- shim:\n${shim.logs().slice(-4000)}`).toEqual([]);
  expect(
    ran
      .filter((s) => s.State === 'passed')
      .map((s) => s.LeafNodeText)
      .sort(),
  ).toEqual([...passing].sort());
  expect(
    ran
      .filter((s) => s.State === 'skipped')
      .map((s) => s.LeafNodeText)
      .sort(),
  ).toEqual(Object.keys(skipped).sort());
  expect(run.code, run.out.slice(-4000)).toBe(0);
}

it(
  'critest: the basic PodSandbox and Container specs, the container log specs and the streaming specs (SPDY)',
  () => critestRun('critest-pods', FOCUS, SKIPPED, PASSING),
  25 * 60_000,
);

it(
  'critest: the streaming specs over WebSocket (--websocket-exec, --websocket-attach, --websocket-portforward)',
  () =>
    critestRun('critest-streaming-websocket', ['runtime should support streaming interfaces'], SKIPPED, STREAMING, [
      '--websocket-exec',
      '--websocket-attach',
      '--websocket-portforward',
    ]),
  25 * 60_000,
);
