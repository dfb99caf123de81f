// PullImage (a warm cell's pre-pull) on a real agent with real runc, from a real registry behind
// a relay that counts requests: the image lands in the cache the pod uses, so a pod started
// afterwards fetches no blob; a second call is a cache hit; bad input and registry faults come
// back as statuses that name the image and the cause.
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { PullImageRequest, PullPolicy, type CellAgentClient, type PullImageResponse } from '@cello/proto/cell';
import { requireCommand, startRequestLog, type RequestLog } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';

let reg: TestImages;
let relay: RequestLog;
let a: TestAgent;
let image: string;

const pullImage = (c: CellAgentClient, req: Partial<PullImageRequest>) =>
  new Promise<PullImageResponse>((resolve, reject) =>
    c.pullImage(PullImageRequest.fromPartial(req), new Metadata(), { deadline: Date.now() + 30_000 }, (err, r) => (err ? reject(err) : resolve(r))),
  );
const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: ServiceError) => ({ code: e.code, details: e.details }),
  );
const blobGets = () => relay.count(/\/blobs\/sha256:/, 'GET');

beforeAll(async () => {
  requireCommand('runc', 'runc');
  reg = await startTestRegistry();
  relay = await startRequestLog(reg.registry.url);
  image = reg.busybox.replace(reg.registry.host, relay.host);
  a = await startTestAgent(undefined, { insecureRegistries: [relay.host] });
}, 60_000);

afterAll(async () => {
  await a?.stop();
  await relay?.stop();
  await reg?.stop();
});

describe('PullImage', () => {
  it("pulls into the pod's cache: then a cache hit, and a pod with that image starts without a blob GET", async () => {
    const first = await pullImage(a.client, { image });
    expect(first.cached).toBe(false);
    expect(first.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(first.downloadedBytes).toBeGreaterThan(0);
    expect(blobGets()).toBeGreaterThan(0);

    const before = relay.requests.length;
    const again = await pullImage(a.client, { image });
    expect(again).toMatchObject({ cached: true, digest: first.digest, downloadedBytes: 0 });
    expect(relay.requests.length).toBe(before);

    const blobs = blobGets();
    await apply(a.client, {
      pod: pod('prepulled', { containers: [{ name: 'main', image, imagePullPolicy: PullPolicy.PULL_POLICY_IF_NOT_PRESENT, command: ['sh', '-c', 'sleep 3600'] }] }),
    });
    await a.watch.until('main running', (w) => w.running('main'));
    expect(blobGets()).toBe(blobs);
    expect(a.watch.events.some((e) => e.reason === 'Pulling')).toBe(false);
  });

  it('bad input and registry faults: INVALID_ARGUMENT, FAILED_PRECONDITION and UNAVAILABLE naming the image', async () => {
    expect(await failure(pullImage(a.client, { image: '' }))).toEqual({ code: status.INVALID_ARGUMENT, details: 'image: an image reference is required' });
    const bad = await failure(pullImage(a.client, { image: `${relay.host}/UPPER/case:1` }));
    expect(bad?.code).toBe(status.INVALID_ARGUMENT);
    expect(bad?.details).toContain(`pulling ${relay.host}/UPPER/case:1: invalid image reference`);
    const missing = await failure(pullImage(a.client, { image: `${relay.host}/nothing/here:1` }));
    expect(missing?.code).toBe(status.FAILED_PRECONDITION);
    expect(missing?.details).toContain('manifest 1 not found');
    relay.down = true;
    try {
      const down = await failure(pullImage(a.client, { image: `${relay.host}/busybox:2` }));
      expect(down?.code).toBe(status.UNAVAILABLE);
      expect(down?.details).toMatch(/^pulling .*busybox:2: .*HTTP 503/);
    } finally {
      relay.down = false;
    }
  }, 60_000);
});
