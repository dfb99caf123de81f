// Pre-pulled warm cells end to end: the controller daemon with the local provider (real
// cell-agent processes, real runc) and a real registry behind a relay that counts requests. A
// warm cell pulls its configured image before any pod asks; a pod landing on it starts without a
// single blob GET, with a hit in cello_prepull_images_total and a PrePulled event; a pod whose
// image was not pre-pulled is a miss.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase } from '@cello/proto/cell';
import { CellState } from '@cello/proto/controller';
import { pushImage, startRequestLog, waitFor, type RequestLog } from '@cello/testkit';
import { Cluster, startFixtureRegistry, type Registry } from './helpers/cluster.js';

let registry: Registry;
let relay: RequestLog;
let cl: Cluster;
let image: string;
let other: string;

// IfNotPresent, as for any pinned tag: with Always (the default for :latest) the kubelet's rule
// asks the registry for the manifest again, and the puller its config, but still no layer.
const pod = (name: string, img: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ${img}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo up; sleep 3600"]
`;
const blobGets = (repo: string) => relay.count(new RegExp(`^/v2/${repo}/blobs/sha256:`), 'GET');
const running = (p: { status?: { phase: PodPhase } }) => p.status?.phase === PodPhase.POD_PHASE_RUNNING;

beforeAll(async () => {
  registry = await startFixtureRegistry();
  relay = await startRequestLog(registry.server.url);
  image = registry.image.replace(registry.server.host, relay.host);
  // A second image (its one layer: a file) that nothing pre-pulls.
  const tar = (await import('node:child_process')).execFileSync('tar', ['-C', '/', '-cf', '-', 'etc/hostname']);
  other = (await pushImage(registry.server, 'other:1', [{ blob: tar }])).ref.replace(registry.server.host, relay.host);
  cl = new Cluster({ registry, warm: 1, prePull: [image], insecureRegistries: [relay.host], healthSeconds: 5 });
  await cl.start();
}, 120_000);

afterAll(async () => {
  await cl?.stop();
  await relay?.stop();
  await registry?.server.stop();
}, 60_000);

describe('pre-pulled warm cells (local provider)', () => {
  it('a warm cell pre-pulls its configured image; a pod landing on it starts with no blob GET, a hit in the metrics and its events', async () => {
    await waitFor('the warm cell pre-pulled its image', async () => (await cl.metric('cello_prepull_pulls_total', { outcome: 'pulled' })) >= 1, {
      timeoutMs: 90_000,
      intervalMs: 200,
    });
    expect(blobGets('busybox')).toBeGreaterThan(0);
    const warm = (await cl.cells()).find((c) => c.state === CellState.CELL_STATE_READY && !c.pod?.name)!;
    expect(warm).toBeDefined();

    const applied = await cl.cellctl(['apply', '-f', cl.manifest('hit', pod('hit', image))]);
    expect(applied.stderr).toBe('');
    const p = await cl.waitPod('hit', 'running', running, 60_000);
    expect(p.cellId).toBe(warm.id);
    const events = await cl.events('hit');
    // Not one blob fetched after the pod was bound: all of it was on the cell. (Before the binding
    // the scheduler read the image's manifest and config for its platform: docs/architectures.md.)
    const bound = events.find((e) => e.reason === 'Scheduled')!.time!.getTime();
    const after = relay.requests.filter((r) => r.at >= bound && /^\/v2\/busybox\/blobs\//.test(r.path));
    expect(after, JSON.stringify(relay.requests.slice(-8))).toEqual([]);
    expect(events.some((e) => e.reason === 'Pulling')).toBe(false);
    expect(await cl.metric('cello_prepull_images_total', { result: 'hit' })).toBe(1);
    expect(await cl.metric('cello_prepull_images_total', { result: 'miss' })).toBe(0);
    expect(events.map((e) => `${e.reason}: ${e.message}`)).toContain(`PrePulled: warm cell ${warm.id}: pre-pulled: ${image}`);
  }, 180_000);

  it('a pod whose image no warm cell pulled is a miss, said in its events, and its layers are fetched', async () => {
    await waitFor(
      'the refilled warm cell pre-pulled too',
      async () =>
        (await cl.cells()).some((c) => c.state === CellState.CELL_STATE_READY && !c.pod?.name) && (await cl.metric('cello_prepull_pulls_total', { outcome: 'cached' })) >= 1,
      { timeoutMs: 90_000, intervalMs: 200 },
    );
    const warm = (await cl.cells()).find((c) => c.state === CellState.CELL_STATE_READY && !c.pod?.name)!;
    const before = blobGets('other');
    await cl.cellctl(['apply', '-f', cl.manifest('miss', pod('miss', other))]);
    const p = await cl.waitPod('miss', 'running', running, 60_000);
    expect(p.cellId).toBe(warm.id);
    expect(blobGets('other')).toBeGreaterThan(before);
    expect(await cl.metric('cello_prepull_images_total', { result: 'miss' })).toBe(1);
    const events = await cl.events('miss');
    expect(events.map((e) => `${e.reason}: ${e.message}`)).toContain(`NotPrePulled: warm cell ${warm.id}: not pre-pulled: ${other}`);
  }, 180_000);
});
