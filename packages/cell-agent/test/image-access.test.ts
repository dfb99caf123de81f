// The shared image cache and private images, with a real registry behind HTTP Basic auth and
// real units: a pod may not run another pod's private image from the cache without its own
// credentials being accepted by the registry for that image.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status, type ServiceError } from '@grpc/grpc-js';
import { PullImageRequest, PullPolicy, type PullImageResponse } from '@cello/proto/cell';
import { buildFixtures, pushLayoutTag, startRegistry, type RegistryServer } from '@cello/testkit';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

let priv: RegistryServer;
let pub: TestImages;
let privRef: string;
let publicCopyRef: string;
const agents: TestAgent[] = [];
const cache = mkdtempSync(join(tmpdir(), 'cello-shared-cache-'));

beforeAll(async () => {
  requireTools();
  const dir = mkdtempSync(join(tmpdir(), 'cello-htpasswd-'));
  const hash = execFileSync('python3', ['-c', "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))"], { encoding: 'utf8' }).trim();
  writeFileSync(join(dir, 'htpasswd'), `puller:${hash}\n`);
  priv = await startRegistry({ htpasswd: join(dir, 'htpasswd') });
  pub = await startTestRegistry();
  const f = await buildFixtures('busybox');
  privRef = await pushLayoutTag(priv, f.layout, 'busybox', 'private/busybox:1', { creds: 'puller:s3cret' });
  // The very same bytes, public in another registry: the same digest.
  publicCopyRef = await pushLayoutTag(pub.registry, f.layout, 'busybox', 'public/busybox:1');
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await priv?.stop();
  await pub?.stop();
});

async function agent(): Promise<TestAgent> {
  const a = await startTestAgent(undefined, { insecureRegistries: [priv.host, pub.registry.host], imageCacheDir: cache });
  agents.push(a);
  return a;
}

const good = () => [{ registry: priv.host, username: 'puller', password: 's3cret', identityToken: '' }];

describe('shared image cache', () => {
  it("another pod's private image is not used from the cache without credentials the registry accepts", async () => {
    const owner = await agent();
    await apply(owner.client, { pod: pod('owner', { containers: [{ name: 'c', image: privRef, command: ['sleep', '3600'] }] }), registryCredentials: good() });
    await owner.watch.until('owner running', (w) => w.running('c'), 30_000);

    // Same cache, IfNotPresent, no credentials: refused, nothing started.
    const thief = await agent();
    const spec = (name: string) => pod(name, { containers: [{ name: 'c', image: privRef, imagePullPolicy: PullPolicy.PULL_POLICY_IF_NOT_PRESENT, command: ['sleep', '3600'] }] });
    await apply(thief.client, { pod: spec('thief') });
    await thief.watch.until('thief refused', (w) => ['ErrImagePull', 'ImagePullBackOff'].includes(w.waiting('c')?.reason ?? ''), 20_000);
    expect(thief.watch.waiting('c')!.message).toMatch(/cached, but the registry does not serve it to this pod's credentials/);

    // Wrong credentials: refused too.
    const wrong = await agent();
    await apply(wrong.client, { pod: spec('wrong'), registryCredentials: [{ registry: priv.host, username: 'puller', password: 'guess', identityToken: '' }] });
    await wrong.watch.until('wrong refused', (w) => ['ErrImagePull', 'ImagePullBackOff'].includes(w.waiting('c')?.reason ?? ''), 20_000);
    expect(wrong.watch.waiting('c')!.message).toMatch(/cached, but the registry does not serve it/);
    expect(thief.watch.unit('c')?.state?.state?.$case).not.toBe('running');

    // The right credentials: the cached image is used (checked with the registry, not pulled again).
    const friend = await agent();
    await apply(friend.client, { pod: spec('friend'), registryCredentials: good() });
    await friend.watch.until('friend running', (w) => w.running('c'), 30_000);
    expect(friend.watch.events.some((e) => e.reason === 'Pulling')).toBe(false);
  });

  it('the same digest pulled anonymously from a public repository does not open the private one', async () => {
    // One agent (one access record): a warm cell pre-pulls the public copy, then is asked for
    // the private repository without credentials, as a pre-pull or a pod without secrets would.
    const pull = (on: TestAgent, image: string, registryCredentials: ReturnType<typeof good> = []) =>
      new Promise<{ err: ServiceError | null; res?: PullImageResponse }>((resolve) =>
        on.client.pullImage(PullImageRequest.fromPartial({ image, registryCredentials }), (err, res) => resolve({ err, res })),
      );
    // The private image is in the shared cache: its owner pulled it with its credentials.
    expect((await pull(await agent(), privRef, good())).err).toBeNull();
    const a = await agent();
    const pub1 = await pull(a, publicCopyRef);
    expect(pub1.err).toBeNull();
    const priv1 = await pull(a, privRef);
    expect(priv1.res?.digest).toBeUndefined();
    expect(priv1.err?.code).toBe(status.FAILED_PRECONDITION);
    expect(priv1.err?.details).toMatch(/credentials required for private\/busybox/);
  });

  it('a public image in the shared cache is used by any pod', async () => {
    const first = await agent();
    await apply(first.client, { pod: pod('pub1', { containers: [{ name: 'c', image: pub.busybox, command: ['sleep', '3600'] }] }) });
    await first.watch.until('first running', (w) => w.running('c'), 30_000);
    const second = await agent();
    await apply(second.client, {
      pod: pod('pub2', { containers: [{ name: 'c', image: pub.busybox, imagePullPolicy: PullPolicy.PULL_POLICY_IF_NOT_PRESENT, command: ['sleep', '3600'] }] }),
    });
    await second.watch.until('second running', (w) => w.running('c'), 30_000);
  });
});
