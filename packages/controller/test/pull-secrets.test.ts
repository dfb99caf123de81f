// imagePullSecrets end to end through cellctl: the controller daemon with the local provider
// (real cell-agent processes, real runc), a private registry behind HTTP Basic auth (htpasswd)
// and a public one. A dockerconfigjson Secret applied with a pod reaches its cell as the
// credential for exactly the registries the pod pulls from, sealed in the store, never logged;
// a wrong password shows the registry's reason as ErrImagePull/ImagePullBackOff.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase, type ContainerStatus } from '@cello/proto/cell';
import type { PodObject } from '@cello/proto/controller';
import { buildFixtures, pushLayoutTag, startRegistry, type RegistryServer } from '@cello/testkit';
import { Cluster, startFixtureRegistry, type Registry } from './helpers/cluster.js';

const PASSWORD = `pw-${randomUUID()}`;
let pub: Registry;
let priv: RegistryServer;
let privImage: string;
let cl: Cluster;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cello-htpasswd-'));
  const hash = execFileSync('python3', ['-c', `import crypt; print(crypt.crypt(${JSON.stringify(PASSWORD)}, crypt.mksalt(crypt.METHOD_BLOWFISH)))`], { encoding: 'utf8' }).trim();
  writeFileSync(join(dir, 'htpasswd'), `puller:${hash}\n`);
  [pub, priv] = await Promise.all([startFixtureRegistry(), startRegistry({ htpasswd: join(dir, 'htpasswd') })]);
  privImage = await pushLayoutTag(priv, (await buildFixtures('busybox')).layout, 'busybox', 'private/busybox:1', { creds: `puller:${PASSWORD}` });
  cl = new Cluster({ registry: pub, insecureRegistries: [priv.host] });
  await cl.start();
}, 180_000);

afterAll(async () => {
  await cl?.stop();
  await Promise.all([pub?.server.stop(), priv?.stop()]);
}, 60_000);

const dockerconfig = (server: string, password: string) => JSON.stringify({ auths: { [server]: { auth: Buffer.from(`puller:${password}`).toString('base64') } } });

function manifest(name: string, image: string, pullSecrets: string[], password = PASSWORD): string {
  return cl.manifest(
    name,
    `apiVersion: v1
kind: Secret
metadata: { name: regcred-${name} }
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '${dockerconfig(priv.host, password)}'
---
apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [${pullSecrets.map((s) => `{ name: ${s} }`).join(', ')}]
  containers:
  - name: main
    image: ${image}
    command: ["sh", "-c", "while true; do sleep 1; done"]
`,
  );
}

const main = (p: PodObject): ContainerStatus | undefined => p.status?.containerStatuses.find((c) => c.name === 'main');
const waiting = (p: PodObject) => (main(p)?.state?.state?.$case === 'waiting' ? main(p)!.state!.state!.value : undefined) as { reason: string; message: string } | undefined;

function filesUnder(dir: string): Buffer[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? filesUnder(p) : [readFileSync(p)];
  });
}

describe('imagePullSecrets end to end (local cells, runc, registry with htpasswd)', () => {
  it('a dockerconfigjson Secret applied with the pod: the private image pulls and runs; sealed at rest, never logged', async () => {
    const r = await cl.cellctl(['apply', '-f', manifest('private', privImage, ['regcred-private'])]);
    expect(r.code, r.stderr).toBe(0);
    const p = await cl.waitPod('private', 'running', (x) => x.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
    const sent = cl.appliedOnCell(p.cellId);
    expect(sent.registryCredentials).toEqual([{ registry: priv.host, username: 'puller', password: PASSWORD, identityToken: '' }]);
    // The pull secret reached the cell as that credential only, not as a Secret.
    expect(Object.keys(sent.secrets)).toEqual([]);
    expect(cl.controllerLog).not.toContain(PASSWORD);
    expect(filesUnder(cl.storeDir).some((b) => b.includes(PASSWORD) || b.includes(Buffer.from(PASSWORD).toString('base64').slice(0, 20)))).toBe(false);
  }, 120_000);

  it("a wrong password: ErrImagePull, then ImagePullBackOff, with the registry's reason in the status and the events", async () => {
    const r = await cl.cellctl(['apply', '-f', manifest('wrongpw', privImage, ['regcred-wrongpw'], 'guess')]);
    expect(r.code, r.stderr).toBe(0);
    const p = await cl.waitPod('wrongpw', 'in ImagePullBackOff', (x) => waiting(x)?.reason === 'ImagePullBackOff', 90_000);
    expect(waiting(p)!.message).toMatch(/unauthorized/);
    expect(p.status?.phase).toBe(PodPhase.POD_PHASE_PENDING);
    const events = await cl.events('wrongpw');
    expect(
      events.find((e) => e.reason === 'Failed' && /unauthorized/.test(e.message)),
      JSON.stringify(events),
    ).toBeDefined();
    expect(events.some((e) => e.reason === 'BackOff')).toBe(true);
    expect(cl.controllerLog).not.toContain('guess');
  }, 120_000);

  it('a pod that pulls only from another registry gets no credential for the private one; a missing pull secret is reported and the pull goes ahead', async () => {
    const r = await cl.cellctl(['apply', '-f', manifest('public', pub.image, ['regcred-public', 'does-not-exist'])]);
    expect(r.code, r.stderr).toBe(0);
    const p = await cl.waitPod('public', 'running', (x) => x.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
    const sent = cl.appliedOnCell(p.cellId);
    expect(sent.registryCredentials).toEqual([]);
    expect(Object.keys(sent.secrets)).toEqual([]);
    const events = await cl.events('public');
    const warn = events.find((e) => e.reason === 'FailedToRetrieveImagePullSecret');
    expect(warn?.message).toMatch(/does-not-exist: not found/);
  }, 120_000);

  it('a malformed dockerconfigjson Secret is refused at apply, naming the Secret and the field', async () => {
    const path = cl.manifest(
      'bad',
      `apiVersion: v1
kind: Secret
metadata: { name: badcred }
type: kubernetes.io/dockerconfigjson
stringData: { .dockerconfigjson: '{"auths": {"r.example.com": {"auth": "bm9jb2xvbg=="}}}' }
---
apiVersion: v1
kind: Pod
metadata: { name: bad }
spec: { imagePullSecrets: [{ name: badcred }], containers: [{ name: main, image: IMAGE }] }
`,
    );
    const r = await cl.cellctl(['apply', '-f', path]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/data\["\.dockerconfigjson"\]\.auths\["r\.example\.com"\]\.auth: must be base64 of "username:password" \(Secret "badcred"/);
    await expect(cl.pod('bad')).rejects.toThrow();
  }, 60_000);
});
