import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushBusybox, startRegistry, startTokenIssuer, type RegistryServer, type TokenIssuer } from '@cello/testkit';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ImagePuller, PullError } from '../src/index.js';
import { FaultProxy } from './helpers/proxy.js';

let work: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ip-faults-'));
});
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const fast = { attempts: 5, backoffMs: 10 };

describe('faults through a proxy', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let ref: string;
  let layer: RegExp;
  let n = 0;
  const puller = (): ImagePuller => new ImagePuller({ root: join(work, `cache-${n++}`), plainHttp: [proxy.host], transport: fast });

  beforeAll(async () => {
    registry = await startRegistry();
    await pushBusybox(registry, 'busybox:latest');
    proxy = new FaultProxy({ host: '127.0.0.1', port: registry.port });
    await proxy.start();
    ref = `${proxy.host}/busybox:latest`;
    const info = await puller().inspect(ref);
    expect(info.layers[0]!.size).toBeGreaterThan(400_000);
    layer = new RegExp(`/blobs/${info.layers[0]!.digest}$`);
  });
  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
  });
  beforeEach(() => {
    proxy.seen.length = 0;
  });

  it('resumes a blob whose connection dropped mid-transfer with Range', async () => {
    proxy.inject({ match: layer, times: 1, dropAfter: 200_000 });
    const img = await puller().pull(ref);
    expect(img.layerDirs).toHaveLength(1);
    const blobReqs = proxy.seen.filter((r) => layer.test(r.path));
    expect(blobReqs).toHaveLength(2);
    expect(blobReqs[0]!.range).toBeUndefined();
    const start = Number(/^bytes=(\d+)-$/.exec(blobReqs[1]!.range ?? '')?.[1]);
    expect(start).toBeGreaterThan(0);
    expect(start).toBeLessThanOrEqual(200_000);
    expect(blobReqs[1]!.status).toBe(206);
  });

  it('a registry that stops answering hits the headers deadline: retried, then a network error', async () => {
    let release!: () => void;
    proxy.inject({ match: layer, hold: new Promise<void>((r) => (release = r)) });
    const p = new ImagePuller({ root: join(work, `cache-${n++}`), plainHttp: [proxy.host], transport: { attempts: 2, backoffMs: 10, headersTimeoutMs: 300, bodyTimeoutMs: 300 } });
    const t0 = Date.now();
    try {
      const err = await p.pull(ref).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PullError);
      expect((err as PullError).kind).toBe('network');
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(proxy.seen.filter((r) => layer.test(r.path))).toHaveLength(2);
    } finally {
      release();
      proxy.inject();
    }
  });

  it("the caller's AbortSignal ends a pull in flight promptly and leaves no temp files", async () => {
    let release!: () => void;
    proxy.inject({ match: layer, hold: new Promise<void>((r) => (release = r)) });
    const root = join(work, `cache-${n++}`);
    const p = new ImagePuller({ root, plainHttp: [proxy.host], transport: fast });
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('test deadline')), 300);
    const t0 = Date.now();
    try {
      await expect(p.pull(ref, { signal: ac.signal })).rejects.toThrow();
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(readdirSync(join(root, 'tmp'))).toEqual([]);
      expect(readdirSync(join(root, 'layers'))).toEqual([]);
    } finally {
      release();
      proxy.inject();
    }
  });

  it('retries 5xx and 429, then succeeds', async () => {
    proxy.inject({ match: /\/manifests\//, times: 2, status: 503 }, { match: layer, times: 1, status: 429 });
    const img = await puller().pull(ref);
    expect(img.layerDirs).toHaveLength(1);
    expect(proxy.seen.filter((r) => r.path.includes('/manifests/')).map((r) => r.status)).toEqual([503, 503, 200]);
    expect(proxy.seen.filter((r) => layer.test(r.path)).map((r) => r.status)).toEqual([429, 200]);
  });

  it('gives up with a network error when 5xx persists', async () => {
    proxy.inject({ match: /\/manifests\//, status: 502 });
    const err = await puller()
      .pull(ref)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe('network');
    expect(proxy.seen.filter((r) => r.path.includes('/manifests/'))).toHaveLength(fast.attempts);
  });

  it('corrupted bytes: integrity error, nothing cached', async () => {
    proxy.inject({ match: layer, corruptAt: 1234 });
    const p = puller();
    const root = join(work, `cache-${n - 1}`);
    const err = await p.pull(ref).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe('integrity');
    const digest = layer.source.split('sha256:')[1]!.replace('$', '');
    expect(readdirSync(join(root, 'blobs', 'sha256'))).not.toContain(digest);
    expect(readdirSync(join(root, 'layers'))).toEqual([]);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
    // The same cache pulls fine once the corruption stops.
    proxy.inject();
    expect((await p.pull(ref)).layerDirs).toHaveLength(1);
  });
});

describe('TLS', () => {
  it('--insecure skips verification of a self-signed registry certificate; without it the pull fails', async () => {
    const { execFileSync } = await import('node:child_process');
    const cert = join(work, 'reg.crt');
    const key = join(work, 'reg.key');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
      { stdio: 'ignore' },
    );
    const tlsReg = await startRegistry({ tls: { certificate: cert, key } });
    try {
      const { pushLayoutTag, buildFixtures } = await import('@cello/testkit');
      const f = await buildFixtures('busybox');
      const ref = await pushLayoutTag(tlsReg, f.layout, 'busybox', 'bb:tls');
      const ok = await new ImagePuller({ root: join(work, 'cache-tls'), insecure: [tlsReg.host] }).pull(ref);
      expect(ok.layerDirs).toHaveLength(1);
      const err = await new ImagePuller({ root: join(work, 'cache-tls2'), transport: fast }).pull(ref).catch((e: unknown) => e);
      expect((err as PullError).kind).toBe('network');
      expect((err as PullError).message).toMatch(/certificate/i);
    } finally {
      await tlsReg.stop();
    }
  });
});

describe('token auth (distribution auth: token, issuer written for the test)', () => {
  let issuer: TokenIssuer;
  let registry: RegistryServer;
  let ref: string;

  beforeAll(async () => {
    issuer = await startTokenIssuer(work, 'alice', 's3cret-pw');
    registry = await startRegistry({ tokenAuth: issuer });
    ref = await pushBusybox(registry, 'team/busybox:1', { creds: 'alice:s3cret-pw' });
  });
  afterAll(async () => {
    await registry?.stop();
    await issuer?.stop();
  });

  it('answers the Bearer challenge, caches the token per scope, and refreshes once on 401', async () => {
    issuer.requests.length = 0;
    const logs: string[] = [];
    const { pino } = await import('pino');
    const logger = pino({ level: 'debug' }, { write: (s: string) => logs.push(s) });
    const p = new ImagePuller({ root: join(work, 'cache-token'), plainHttp: [registry.host], logger });
    const auth = (r: string) => (r === registry.host ? { username: 'alice', password: 's3cret-pw' } : undefined);
    const img = await p.pull(ref, { auth });
    expect(img.layerDirs).toHaveLength(1);
    expect(issuer.requests).toEqual([{ scope: 'repository:team/busybox:pull', user: 'alice' }]);
    await p.pull(ref, { auth });
    expect(issuer.requests).toHaveLength(1); // cached

    // A token the registry rejects while the client still trusts it: refreshed once.
    issuer.badTokens = 1;
    const p2 = new ImagePuller({ root: join(work, 'cache-token2'), plainHttp: [registry.host] });
    const again = await p2.pull(ref, { auth });
    expect(again.digest).toBe(img.digest);
    expect(issuer.requests).toHaveLength(3);
    // ... but only once: a second rejected token is an auth error.
    issuer.badTokens = 10;
    const p3 = new ImagePuller({ root: join(work, 'cache-token4'), plainHttp: [registry.host] });
    const err = await p3.inspect(ref, { auth }).catch((e: unknown) => e);
    expect((err as PullError).kind).toBe('auth');
    expect(issuer.requests).toHaveLength(5);
    issuer.badTokens = 0;
    // Secrets never reach the logs.
    expect(logs.join('')).not.toContain('s3cret-pw');
  });

  it('exchanges an identity token through the OAuth2 refresh grant (access_token)', async () => {
    issuer.requests.length = 0;
    const p = new ImagePuller({ root: join(work, 'cache-idtoken'), plainHttp: [registry.host] });
    const img = await p.pull(ref, { auth: () => ({ identityToken: 'idtoken-alice' }) });
    expect(img.layerDirs).toHaveLength(1);
    expect(issuer.requests).toEqual([{ scope: 'repository:team/busybox:pull', user: 'alice' }]);
  });

  it('bounds the token response: an oversized answer is an auth error, not unbounded memory', async () => {
    issuer.padBytes = 2 << 20;
    try {
      const p = new ImagePuller({ root: join(work, 'cache-token-big'), plainHttp: [registry.host] });
      const err = await p.inspect(ref, { auth: () => ({ username: 'alice', password: 's3cret-pw' }) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PullError);
      expect((err as PullError).kind).toBe('auth');
      expect((err as PullError).message).toMatch(/token service answered more than 1048576 bytes/);
    } finally {
      issuer.padBytes = 0;
    }
  });

  it('never sends credentials to a plain-HTTP realm on another host, or to any plain-HTTP realm of an https registry', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdirSync } = await import('node:fs');
    // The realm on 127.0.0.2, a different host than the plain-HTTP registry at 127.0.0.1.
    const dir = join(work, 'issuer-elsewhere');
    mkdirSync(dir);
    const elsewhere = await startTokenIssuer(dir, 'alice', 's3cret-pw', '127.0.0.2');
    const plainReg = await startRegistry({ tokenAuth: elsewhere });
    // An https registry whose realm (the first issuer) is plain HTTP on its own host.
    const cert = join(work, 'realm-reg.crt');
    const key = join(work, 'realm-reg.key');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
      { stdio: 'ignore' },
    );
    const tlsReg = await startRegistry({ tokenAuth: issuer, tls: { certificate: cert, key } });
    try {
      const auth = () => ({ username: 'alice', password: 's3cret-pw' });
      const cases = [
        { reg: plainReg, iss: elsewhere, opts: { plainHttp: [plainReg.host] }, why: /a different host than the registry \(127\.0\.0\.1\)/ },
        { reg: tlsReg, iss: issuer, opts: { insecure: [tlsReg.host] }, why: /a registry served over https/ },
      ];
      for (const [i, c] of cases.entries()) {
        c.iss.requests.length = 0;
        for (const creds of [auth, () => ({ identityToken: 'idtoken-alice' })]) {
          const p = new ImagePuller({ root: join(work, `cache-realm-${i}`), ...c.opts });
          const err = await p.inspect(`${c.reg.host}/team/busybox:1`, { auth: creds }).catch((e: unknown) => e);
          await p.close();
          expect(err).toBeInstanceOf(PullError);
          expect((err as PullError).kind).toBe('auth');
          expect((err as PullError).message).toMatch(/refusing to send credentials to the plain-HTTP token realm http:\/\/127\.0\.0\.[12]:\d+/);
          expect((err as PullError).message).toMatch(c.why);
          expect((err as PullError).message).not.toContain('s3cret-pw');
        }
        expect(c.iss.requests).toEqual([]);
      }
    } finally {
      await plainReg.stop();
      await tlsReg.stop();
      await elsewhere.stop();
    }
  });

  it('refuses anonymous and wrong credentials with an auth error that names no secret', async () => {
    const p = new ImagePuller({ root: join(work, 'cache-token3'), plainHttp: [registry.host] });
    const anon = await p.pull(ref).catch((e: unknown) => e);
    expect(anon).toBeInstanceOf(PullError);
    expect((anon as PullError).kind).toBe('auth');
    const wrong = await p.pull(ref, { auth: () => ({ username: 'alice', password: 'nope-wrong' }) }).catch((e: unknown) => e);
    expect((wrong as PullError).kind).toBe('auth');
    expect((wrong as PullError).message).not.toContain('nope-wrong');
  });

  it('a wrong password never rides on the token the right one earned (same puller, same user name)', async () => {
    const p = new ImagePuller({ root: join(work, 'cache-token5'), plainHttp: [registry.host] });
    await p.inspect(ref, { auth: () => ({ username: 'alice', password: 's3cret-pw' }) });
    const wrong = await p.inspect(ref, { auth: () => ({ username: 'alice', password: 'nope-wrong' }) }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(PullError);
    expect((wrong as PullError).kind).toBe('auth');
  });
});
