// crictl (v1.34.0, built from the Go module proxy) against the real cello-cri CLI and a real
// registry: the ImageService end to end, the RuntimeService's honest answers, and the socket's
// permission as the only way in.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { Metadata, status } from '@grpc/grpc-js';
import { criTools, waitFor, startTokenIssuer, pushBusybox, pushImage, pushLayoutTag, buildFixtures, startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PullImageResponse } from '../src/gen/runtime/v1/api.js';
import { call, clients, crictl, deadline, startShim, type Shim } from './shim.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let privateRegistry: RegistryServer;
let shim: Shim;
let htpasswdDir: string;
let busybox: string;
let privateRef: string;
/** Directories of shims stopped with their state kept: removed at the end. */
const leftovers: string[] = [];

const layer = (text: string) => ({ blob: Buffer.from(text.padEnd(512, ' ')) });

async function configDigest(reg: RegistryServer, repo: string, ref: string): Promise<string> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
  });
  if (!res.ok) throw new Error(`manifest ${repo}:${ref}: HTTP ${res.status}`);
  return ((await res.json()) as { config: { digest: string } }).config.digest;
}

interface CrictlImage {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  size: string;
  uid: { value: string } | null;
  username: string;
}

async function images(): Promise<CrictlImage[]> {
  const r = await crictl(tools.crictl, shim.socket, ['images', '-o', 'json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { images: CrictlImage[] }).images;
}

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  htpasswdDir = mkdtempSync(join(tmpdir(), 'cello-cri-htpasswd-'));
  const hash = execFileSync('python3', ['-c', "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))"], { encoding: 'utf8' }).trim();
  writeFileSync(join(htpasswdDir, 'htpasswd'), `puller:${hash}\n`);
  privateRegistry = await startRegistry({ htpasswd: join(htpasswdDir, 'htpasswd') });
  busybox = await pushBusybox(registry, 'busybox:1');
  const f = await buildFixtures('busybox');
  privateRef = await pushLayoutTag(privateRegistry, f.layout, 'busybox', 'private/busybox:1', { creds: 'puller:s3cret' });
  shim = await startShim(['--insecure-registry', registry.host, '--insecure-registry', privateRegistry.host]);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  await registry?.stop();
  await privateRegistry?.stop();
  if (htpasswdDir) rmSync(htpasswdDir, { recursive: true, force: true });
  for (const d of leftovers) rmSync(d, { recursive: true, force: true });
});

describe('the socket', () => {
  it('is 0600, and a user other than root cannot use it', async () => {
    expect(statSync(shim.socket).mode & 0o777).toBe(0o600);
    const r = await crictl(tools.crictl, shim.socket, ['images'], { uid: 65534 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/permission denied/i);
  });
});

describe('RuntimeService', () => {
  it('crictl version names the runtime and the API', async () => {
    const r = await crictl(tools.crictl, shim.socket, ['version']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/RuntimeName:\s+cello-cri/);
    expect(r.stdout).toMatch(/RuntimeApiVersion:\s+v1/);
    expect(r.stdout).toMatch(/RuntimeVersion:\s+0\.1\.0/);
  });

  it('crictl info without a controller says the runtime is not ready, and why; the config is cgroupfs', async () => {
    const r = await crictl(tools.crictl, shim.socket, ['info', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as { status: { conditions: { type: string; status: boolean; reason: string; message: string }[] }; config: unknown };
    const ready = info.status.conditions.find((c) => c.type === 'RuntimeReady')!;
    expect(ready.status).toBe(false);
    expect(ready.reason).toBe('NoController');
    expect(ready.message).toMatch(/without --controller-config/);
    expect(info.status.conditions.find((c) => c.type === 'NetworkReady')?.status).toBe(false);
    expect(JSON.stringify(info.config)).toContain(shim.stateDir);
    const rc = await crictl(tools.crictl, shim.socket, ['runtime-config']);
    expect(rc.code, rc.stderr).toBe(0);
    expect(rc.stdout.toLowerCase()).toContain('cgroupfs');
  });

  it('without a controller, sandbox, container and stats RPCs are refused saying so; events answer UNIMPLEMENTED naming themselves', async () => {
    for (const args of [['pods'], ['ps'], ['stats'], ['statsp']]) {
      const r = await crictl(tools.crictl, shim.socket, [...args]);
      expect(r.code, `${args.join(' ')}: ${r.stdout}`).not.toBe(0);
      expect(r.stderr).toContain('started without --controller-config');
    }
    const c = clients(shim.socket);
    try {
      const run = await call((cb) => c.runtime.runPodSandbox({ config: undefined, runtimeHandler: '' }, new Metadata(), { deadline: deadline() }, cb));
      expect(run.err?.code).toBe(status.FAILED_PRECONDITION);
      expect(run.err?.details).toContain('started without --controller-config');
      // The one server-streaming RPC answers the same way.
      const events = await new Promise<{ code?: number; details?: string }>((resolve) => {
        const s = c.runtime.getContainerEvents({}, new Metadata(), { deadline: deadline() });
        s.on('data', () => resolve({ details: 'got data' }));
        s.on('error', (e: { code: number; details: string }) => resolve(e));
      });
      expect(events.code).toBe(status.UNIMPLEMENTED);
      expect(events.details).toContain('RuntimeService/GetContainerEvents');
    } finally {
      c.close();
    }
  });
});

describe('ImageService through crictl', () => {
  it('pull records the real ID, tag, repo digest and size; images, inspecti and rmi see it', async () => {
    const pull = await crictl(tools.crictl, shim.socket, ['pull', '--annotation', 'team=storage', busybox]);
    expect(pull.code, pull.stderr).toBe(0);
    const id = await configDigest(registry, 'busybox', '1');
    expect(pull.stdout).toContain(id);

    const listed = (await images()).find((i) => i.id === id)!;
    expect(listed.repoTags).toEqual([busybox]);
    expect(listed.repoDigests).toHaveLength(1);
    expect(listed.repoDigests[0]).toMatch(new RegExp(`^${registry.host}/busybox@sha256:[a-f0-9]{64}$`));
    expect(Number(listed.size)).toBeGreaterThan(1000);

    const inspect = await crictl(tools.crictl, shim.socket, ['inspecti', '-o', 'json', busybox]);
    expect(inspect.code, inspect.stderr).toBe(0);
    const st = JSON.parse(inspect.stdout) as {
      status: { id: string; spec: unknown };
      info: { imageSpec: { architecture: string; rootfs: { diff_ids: string[] } }; layersOnNode: boolean };
    };
    expect(st.status.id).toBe(id);
    expect(st.status.spec).toEqual({ image: id, annotations: { team: 'storage' }, runtimeHandler: '', userSpecifiedImage: '' });
    expect(st.info.imageSpec.architecture).toBe('amd64');
    expect(st.info.imageSpec.rootfs.diff_ids.length).toBeGreaterThan(0);
    expect(st.info.layersOnNode).toBe(false);

    // By ID, by a short ID prefix, by repo digest: the same image.
    for (const name of [id, id.slice('sha256:'.length, 'sha256:'.length + 12), listed.repoDigests[0]!]) {
      const r = await crictl(tools.crictl, shim.socket, ['inspecti', '-o', 'json', name]);
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      expect((JSON.parse(r.stdout) as { status: { id: string } }).status.id).toBe(id);
    }

    const fs = await crictl(tools.crictl, shim.socket, ['imagefsinfo', '-o', 'json']);
    expect(fs.code, fs.stderr).toBe(0);
    const fsInfo = JSON.parse(fs.stdout) as { status: { imageFilesystems: { fsId: { mountpoint: string }; usedBytes: { value: string } }[] } };
    expect(fsInfo.status.imageFilesystems[0]!.fsId.mountpoint).toBe(join(shim.stateDir, 'images'));
    expect(Number(fsInfo.status.imageFilesystems[0]!.usedBytes.value)).toBeGreaterThan(0);

    const rmi = await crictl(tools.crictl, shim.socket, ['rmi', busybox]);
    expect(rmi.code, rmi.stderr).toBe(0);
    expect((await images()).find((i) => i.id === id)).toBeUndefined();
    const gone = await crictl(tools.crictl, shim.socket, ['inspecti', busybox]);
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toMatch(/no such image/);
  });

  it('a tag moves to the image a newer pull resolves it to; the old image keeps its repo digest', async () => {
    const first = await pushImage(registry, 'moving:v1', [layer('first')], { Labels: { n: '1' } });
    const a = await crictl(tools.crictl, shim.socket, ['pull', first.ref]);
    expect(a.code, a.stderr).toBe(0);
    const idA = await configDigest(registry, 'moving', 'v1');
    await pushImage(registry, 'moving:v1', [layer('second')], { Labels: { n: '2' } });
    const b = await crictl(tools.crictl, shim.socket, ['pull', first.ref]);
    expect(b.code, b.stderr).toBe(0);
    const idB = await configDigest(registry, 'moving', 'v1');
    expect(idB).not.toBe(idA);
    const all = await images();
    expect(all.find((i) => i.id === idB)?.repoTags).toEqual([first.ref]);
    const old = all.find((i) => i.id === idA)!;
    expect(old.repoTags).toEqual([]);
    expect(old.repoDigests).toEqual([`${registry.host}/moving@${first.digest}`]);
    // Another tag of the same image adds a name; it does not make a second image.
    await pushImage(registry, 'moving:v2', [layer('second')], { Labels: { n: '2' } });
    expect((await crictl(tools.crictl, shim.socket, ['pull', `${registry.host}/moving:v2`])).code).toBe(0);
    expect((await images()).find((i) => i.id === idB)?.repoTags).toEqual([first.ref, `${registry.host}/moving:v2`]);
    // rmi removes the image with all its names.
    expect((await crictl(tools.crictl, shim.socket, ['rmi', idA, idB])).code).toBe(0);
    expect((await images()).filter((i) => i.id === idA || i.id === idB)).toEqual([]);
  });

  it("the image's user: a uid, or a name (before any :group)", async () => {
    const cases = [
      ['user:uid', '1002', { uid: '1002', username: '' }],
      ['user:name', 'www-data:www-data', { uid: null, username: 'www-data' }],
    ] as const;
    for (const [name, user, want] of cases) {
      const p = await pushImage(registry, name, [layer(name)], { User: user });
      expect((await crictl(tools.crictl, shim.socket, ['pull', p.ref])).code).toBe(0);
      const img = (await images()).find((i) => i.repoTags.includes(p.ref))!;
      expect({ uid: img.uid?.value ?? null, username: img.username }).toEqual(want);
    }
  });

  it('the records survive a restart of the shim', async () => {
    const p = await pushImage(registry, 'kept:1', [layer('kept')]);
    expect((await crictl(tools.crictl, shim.socket, ['pull', p.ref])).code).toBe(0);
    const before = await images();
    const stateDir = shim.stateDir;
    // Records are root's alone: the directory 0700, each file 0600.
    expect(statSync(join(stateDir, 'images')).mode & 0o777).toBe(0o700);
    const id = before.find((i) => i.repoTags.includes(p.ref))!.id;
    expect(statSync(join(stateDir, 'images', `${id.slice('sha256:'.length)}.json`)).mode & 0o777).toBe(0o600);
    await shim.stop({ keepState: true });
    leftovers.push(shim.dir);
    shim = await startShim(['--insecure-registry', registry.host, '--insecure-registry', privateRegistry.host], { stateDir });
    expect(await images()).toEqual(before);
  });

  it('bad input is refused naming the field; a missing image is NotFound', async () => {
    const bad = await crictl(tools.crictl, shim.socket, ['pull', `${registry.host}/Not_Valid:1`]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('image.image');
    const missing = await crictl(tools.crictl, shim.socket, ['pull', `${registry.host}/busybox:no-such-tag`]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/NotFound/);
    const c = clients(shim.socket);
    try {
      const empty = await call<PullImageResponse>((cb) =>
        c.images.pullImage({ image: undefined, auth: undefined, sandboxConfig: undefined }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(empty.err?.code).toBe(status.INVALID_ARGUMENT);
      expect(empty.err?.details).toContain('image.image is required');
      const handler = await call<PullImageResponse>((cb) =>
        c.images.pullImage(
          { image: { image: busybox, annotations: {}, userSpecifiedImage: '', runtimeHandler: 'kata' }, auth: undefined, sandboxConfig: undefined },
          new Metadata(),
          { deadline: deadline() },
          cb,
        ),
      );
      expect(handler.err?.code).toBe(status.INVALID_ARGUMENT);
      expect(handler.err?.details).toContain('image.runtime_handler');
    } finally {
      c.close();
    }
  });
});

describe('a pull cut short', () => {
  it("the call's deadline aborts the registry requests and records nothing", async () => {
    // A "registry" that accepts connections and never answers.
    const sockets: Socket[] = [];
    // Connections that carried a request, and whether each is still open.
    const asked = new Map<Socket, boolean>();
    const hang = createNetServer((s) => {
      sockets.push(s);
      s.once('data', () => asked.set(s, !s.destroyed));
      s.on('close', () => asked.has(s) && asked.set(s, false));
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(hang.address() as AddressInfo).port}`;
    const hanging = await startShim(['--insecure-registry', host]);
    const c = clients(hanging.socket);
    try {
      const t0 = Date.now();
      const r = await call<PullImageResponse>((cb) =>
        c.images.pullImage(
          { image: { image: `${host}/stuck:1`, annotations: {}, userSpecifiedImage: '', runtimeHandler: '' }, auth: undefined, sandboxConfig: undefined },
          new Metadata(),
          { deadline: deadline(1500) },
          cb,
        ),
      );
      expect(r.err?.code).toBe(status.DEADLINE_EXCEEDED);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(asked.size).toBeGreaterThan(0);
      // The shim hangs up on the registry instead of waiting out its own timeouts.
      await waitFor('the shim to close the connection of its manifest request', () => [...asked.values()].every((open) => !open), { timeoutMs: 5000 });
      const list = await crictl(tools.crictl, hanging.socket, ['images', '-q']);
      expect(list.stdout.trim()).toBe('');
    } finally {
      c.close();
      await hanging.stop();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => hang.close(() => r()));
    }
  });
});

describe('a private registry', () => {
  const auth = (a: Partial<{ username: string; password: string; auth: string; serverAddress: string; identityToken: string; registryToken: string }>) => ({
    username: '',
    password: '',
    auth: '',
    serverAddress: '',
    identityToken: '',
    registryToken: '',
    ...a,
  });

  it('pulls with the right credentials (--creds and --auth), refuses without or with wrong ones', async () => {
    const anon = await crictl(tools.crictl, shim.socket, ['pull', privateRef]);
    expect(anon.code).not.toBe(0);
    expect(anon.stderr).toMatch(/PermissionDenied|unauthorized|auth/i);
    const wrong = await crictl(tools.crictl, shim.socket, ['pull', '--creds', 'puller:nope', privateRef]);
    expect(wrong.code).not.toBe(0);
    const good = await crictl(tools.crictl, shim.socket, ['pull', '--creds', 'puller:s3cret', privateRef]);
    expect(good.code, good.stderr).toBe(0);
    expect((await crictl(tools.crictl, shim.socket, ['rmi', privateRef])).code).toBe(0);
    const b64 = await crictl(tools.crictl, shim.socket, ['pull', '--auth', Buffer.from('puller:s3cret').toString('base64'), privateRef]);
    expect(b64.code, b64.stderr).toBe(0);
    // The password never reaches the shim's log.
    expect(shim.logs()).not.toContain('s3cret');
  });

  it('refuses registry_token, credentials for another server, and malformed auth, naming the field', async () => {
    const c = clients(shim.socket);
    const pull = (a: ReturnType<typeof auth>) =>
      call<PullImageResponse>((cb) =>
        c.images.pullImage(
          { image: { image: privateRef, annotations: {}, userSpecifiedImage: '', runtimeHandler: '' }, auth: a, sandboxConfig: undefined },
          new Metadata(),
          { deadline: deadline() },
          cb,
        ),
      );
    try {
      const token = await pull(auth({ registryToken: 'abc' }));
      expect(token.err?.code).toBe(status.INVALID_ARGUMENT);
      expect(token.err?.details).toContain('auth.registry_token');
      // Credentials meant for another registry are not sent to this one (nor is the pull tried with them).
      const other = await pull(auth({ username: 'puller', password: 's3cret', serverAddress: 'https://evil.example.com/v2/' }));
      expect(other.err?.code).toBe(status.INVALID_ARGUMENT);
      expect(other.err?.details).toContain('auth.server_address');
      const same = await pull(auth({ username: 'puller', password: 's3cret', serverAddress: `http://${privateRegistry.host}` }));
      expect(same.err, same.err?.details).toBeUndefined();
      const garbage = await pull(auth({ auth: '!!not base64!!' }));
      expect(garbage.err?.code).toBe(status.INVALID_ARGUMENT);
      expect(garbage.err?.details).toContain('auth.auth');
      const both = await pull(auth({ identityToken: 't', username: 'puller', password: 's3cret' }));
      expect(both.err?.details).toContain('auth.identity_token');
    } finally {
      c.close();
    }
  });

  it('a token registry (distribution auth: token): username/password and identity_token both reach the issuer as that user', async () => {
    const work = mkdtempSync(join(tmpdir(), 'cello-cri-token-'));
    const issuer = await startTokenIssuer(work, 'alice', 'tok-s3cret');
    const tokenRegistry = await startRegistry({ tokenAuth: issuer });
    const tokenShim = await startShim(['--insecure-registry', tokenRegistry.host]);
    const c = clients(tokenShim.socket);
    try {
      const ref = await pushBusybox(tokenRegistry, 'team/busybox:1', { creds: 'alice:tok-s3cret' });
      issuer.requests.length = 0;
      const withPassword = await crictl(tools.crictl, tokenShim.socket, ['pull', '--creds', 'alice:tok-s3cret', ref]);
      expect(withPassword.code, withPassword.stderr).toBe(0);
      expect(issuer.requests).toEqual([{ scope: 'repository:team/busybox:pull', user: 'alice' }]);
      expect((await crictl(tools.crictl, tokenShim.socket, ['rmi', ref])).code).toBe(0);
      // The issuer grants the OAuth2 refresh grant for the identity token `idtoken-alice`.
      const withToken = await call<PullImageResponse>((cb) =>
        c.images.pullImage(
          { image: { image: ref, annotations: {}, userSpecifiedImage: '', runtimeHandler: '' }, auth: auth({ identityToken: 'idtoken-alice' }), sandboxConfig: undefined },
          new Metadata(),
          { deadline: deadline() },
          cb,
        ),
      );
      expect(withToken.err, withToken.err?.details).toBeUndefined();
      expect(withToken.res?.imageRef).toMatch(/^sha256:[a-f0-9]{64}$/);
      const wrongToken = await call<PullImageResponse>((cb) =>
        c.images.pullImage(
          { image: { image: ref, annotations: {}, userSpecifiedImage: '', runtimeHandler: '' }, auth: auth({ identityToken: 'idtoken-mallory' }), sandboxConfig: undefined },
          new Metadata(),
          { deadline: deadline() },
          cb,
        ),
      );
      expect(wrongToken.err?.code).toBe(status.PERMISSION_DENIED);
      expect(tokenShim.logs()).not.toContain('tok-s3cret');
      expect(tokenShim.logs()).not.toContain('idtoken-alice');
    } finally {
      c.close();
      await tokenShim.stop();
      await tokenRegistry.stop();
      await issuer.stop();
      rmSync(work, { recursive: true, force: true });
    }
  });

  it("the credentials go to the image's registry only, never to its mirror", async () => {
    // A mirror that asks every client for Basic credentials: a shim that sent the pull's
    // credentials beyond the image's own registry would answer its challenge with them.
    const seen: (string | undefined)[] = [];
    const mirror = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(401, { 'www-authenticate': 'Basic realm="mirror"', 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
    });
    await new Promise<void>((r) => mirror.listen(0, '127.0.0.1', r));
    const mirrorHost = `127.0.0.1:${(mirror.address() as AddressInfo).port}`;
    const cfgDir = mkdtempSync(join(tmpdir(), 'cello-cri-registries-'));
    const cfg = join(cfgDir, 'registries.yaml');
    writeFileSync(cfg, `registries:\n  "${privateRegistry.host}": {plainHttp: true, mirrors: [{host: "${mirrorHost}"}]}\n  "${mirrorHost}": {plainHttp: true}\n`);
    const mirrored = await startShim(['--registry-config', cfg]);
    try {
      const r = await crictl(tools.crictl, mirrored.socket, ['pull', '--creds', 'puller:s3cret', privateRef]);
      expect(r.code, r.stderr).toBe(0);
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.filter((h) => h !== undefined)).toEqual([]);
    } finally {
      await mirrored.stop();
      await new Promise<void>((r) => mirror.close(() => r()));
      rmSync(cfgDir, { recursive: true, force: true });
    }
  });
});
