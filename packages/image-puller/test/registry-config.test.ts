// Per-registry configuration against real docker-registry servers: a private CA, a required
// client certificate, mirrors with fallback, capabilities, rewrites; and the field-naming errors.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, makeTestPki, pushBusybox, startRegistry, type RegistryServer, type TestPki } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePuller, PullError, createRegistryReader, loadRegistryConfig, parseRegistryConfig, type RegistryConfig } from '../src/index.js';
import { DispatcherPool } from '../src/registry.js';

let pki: TestPki;
let n = 0;
const fast = { attempts: 2, backoffMs: 10 };
const cache = (): string => join(pki.dir, `cache-${n++}`);
const puller = (registries: RegistryConfig): ImagePuller => new ImagePuller({ root: cache(), registries, transport: fast });

async function pullError(p: Promise<unknown>): Promise<PullError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PullError);
  return err as PullError;
}

beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => {
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

describe('parseRegistryConfig: bad input names the field', () => {
  const cases: [string, unknown, RegExp][] = [
    ['a scheme in a host key', { 'https://reg:5000': {} }, /^registries\["https:\/\/reg:5000"\]: expected a registry host/],
    ['a mirror with a path', { 'docker.io': { mirrors: [{ host: 'mirror:5000/x' }] } }, /^registries\["docker.io"\]\.mirrors\[0\]\.host: expected a registry host/],
    ['an unknown capability', { 'docker.io': { mirrors: [{ host: 'm:1', capabilities: ['push'] }] } }, /^registries\["docker.io"\]\.mirrors\[0\]\.capabilities\[0\]: /],
    ['an unknown key', { r: { skip_verify: true } }, /^registries\["r"\]: .*skip_verify/],
    ['a client certificate without its key', { r: { client: { certPem: 'x' } } }, /^registries\["r"\]\.client: give the client key/],
    ['a CA that is not PEM', { r: { caPem: 'hello' } }, /^registries\["r"\]\.caPem: expected PEM certificates/],
    ['the second CA file not PEM', { r: { caFile: ['ca.pem', 'client.key'] } }, /^registries\["r"\]\.caFile\[1\]: expected PEM certificates/],
    ['a CA file that does not exist', { r: { caFile: 'nope.pem' } }, /^registries\["r"\]\.caFile: cannot read nope\.pem: ENOENT/],
    ['TLS settings on a plain-HTTP host', { r: { plainHttp: true, skipVerify: true } }, /^registries\["r"\]: plainHttp has no TLS/],
    ['rewrite and mirrors together', { r: { rewrite: { host: 'a:1' }, mirrors: [{ host: 'b:1' }] } }, /^registries\["r"\]\.rewrite: rewrite and mirrors exclude each other/],
    ['a rewrite prefix with ..', { r: { rewrite: { host: 'a:1', prefix: '../x' } } }, /^registries\["r"\]\.rewrite\.prefix: expected repository path components/],
  ];
  for (const [what, input, want] of cases) {
    it(what, () => {
      let err: unknown;
      try {
        parseRegistryConfig(input, { baseDir: pki.dir });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(PullError);
      expect((err as PullError).kind).toBe('invalid');
      expect((err as PullError).message).toMatch(want);
    });
  }

  it('a key that is not a key, and never its content in the message', () => {
    const secret = '-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n';
    const err = (() => {
      try {
        parseRegistryConfig({ r: { client: { certPem: readFileSync(pki.client.cert, 'utf8'), keyPem: secret } } });
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).toBe('registries["r"].client.keyPem: not a PEM private key');
  });

  it('a file: YAML, files relative to it, only a registries: map', () => {
    const file = join(pki.dir, 'registries.yaml');
    writeFileSync(
      file,
      `registries:\n  "reg.internal:5443":\n    caFile: ca.pem\n    client: {certFile: client.pem, keyFile: client.key}\n  docker.io:\n    mirrors: [{host: "mirror.internal:5000", prefix: dockerhub}]\n`,
    );
    const cfg = loadRegistryConfig(file);
    expect(cfg['reg.internal:5443']!.caPem).toEqual([readFileSync(pki.ca, 'utf8')]);
    expect(cfg['reg.internal:5443']!.client!.keyPem).toBe(readFileSync(pki.client.key, 'utf8'));
    expect(cfg['docker.io']!.mirrors).toEqual([{ host: 'mirror.internal:5000', prefix: 'dockerhub', capabilities: ['pull', 'resolve'] }]);
    writeFileSync(file, '{"mirrors": {}}');
    expect(() => loadRegistryConfig(file)).toThrow(/expected a document with a "registries:" map/);
  });

  it('one dispatcher per TLS setting, reused', () => {
    const pool = new DispatcherPool();
    const ca = [readFileSync(pki.ca, 'utf8')];
    const a = pool.get({ plainHttp: false, caPem: ca, skipVerify: false });
    expect(pool.get({ plainHttp: false, caPem: [...ca], skipVerify: false })).toBe(a);
    expect(pool.get({ plainHttp: false, caPem: [], skipVerify: false })).not.toBe(a);
    expect(pool.get({ plainHttp: true, caPem: [], skipVerify: false })).toBe(pool.get({ plainHttp: true, caPem: [], skipVerify: false }));
    return pool.close();
  });
});

describe('TLS with a private CA', () => {
  let reg: RegistryServer;
  let ref: string;
  beforeAll(async () => {
    reg = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key } });
    ref = await pushBusybox(reg, 'private/bb:1');
  });
  afterAll(() => reg?.stop());

  it('without the CA: certificate signed by unknown authority, and which field to set', async () => {
    const err = await pullError(puller({}).pull(ref));
    expect(err.kind).toBe('network');
    expect(err.message).toMatch(new RegExp(`^${reg.host}: .*certificate signed by unknown authority; add the registry's CA \\(registries\\["${reg.host}"\\]\\.caPem or caFile\\)`));
  });

  it('with the CA (from a file): the pull succeeds, verified', async () => {
    const file = join(pki.dir, 'ca-only.yaml');
    writeFileSync(file, `registries:\n  "${reg.host}": {caFile: ${JSON.stringify(pki.ca)}}\n`);
    const img = await puller(loadRegistryConfig(file)).pull(ref);
    expect(img.layerDirs).toHaveLength(1);
  });

  it('the CA of one host is not trusted for another', async () => {
    const err = await pullError(puller({ 'other.example:5000': { plainHttp: false, caPem: [readFileSync(pki.ca, 'utf8')], skipVerify: false, mirrors: [] } }).pull(ref));
    expect(err.message).toMatch(/unknown authority/);
  });
});

describe('TLS with a required client certificate (http.tls.clientcas)', () => {
  let reg: RegistryServer;
  let ref: string;
  const cfg = (client?: { cert: string; key: string }): RegistryConfig =>
    parseRegistryConfig({
      [reg.host]: { caFile: pki.ca, ...(client ? { client: { certFile: client.cert, keyFile: client.key } } : {}) },
    });
  beforeAll(async () => {
    reg = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key, clientCas: [pki.ca], client: pki.client } });
    ref = await pushBusybox(reg, 'mtls/bb:1');
  });
  afterAll(() => reg?.stop());

  it('without a client certificate the handshake is refused, and the error says so', async () => {
    const err = await pullError(puller(cfg()).pull(ref));
    expect(err.kind).toBe('network');
    expect(err.message).toMatch(/ERR_SSL_\w+_ALERT_\w+: the registry refused the TLS handshake, it wants a client certificate it trusts/);
    expect(err.message).toContain(`registries["${reg.host}"].client`);
  });

  it('a client certificate from another CA is refused', async () => {
    const err = await pullError(puller(cfg(pki.rogueClient)).pull(ref));
    expect(err.kind).toBe('network');
  });

  it('with the client certificate the pull succeeds', async () => {
    expect((await puller(cfg(pki.client)).pull(ref)).layerDirs).toHaveLength(1);
  });
});

describe('mirrors and rewrites (plain-HTTP registries)', () => {
  let upstream: RegistryServer;
  let mirror: RegistryServer;
  let empty: RegistryServer;
  let ref: string;
  const plain = (host: string) => ({ [host]: { plainHttp: true } });

  beforeAll(async () => {
    [upstream, mirror, empty] = await Promise.all([startRegistry(), startRegistry(), startRegistry()]);
    ref = await pushBusybox(upstream, 'team/bb:1');
    await pushBusybox(mirror, 'cache/team/bb:1');
    await pushBusybox(mirror, 'dockerhub/library/rewritten:1');
  });
  afterAll(async () => {
    await Promise.all([upstream, mirror, empty].map((r) => r?.stop()));
  });

  it('a mirror that answers 404 is asked first, then the upstream', async () => {
    const registries = parseRegistryConfig({ ...plain(empty.host), [upstream.host]: { plainHttp: true, mirrors: [{ host: empty.host }] } });
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    const img = await new ImagePuller({ root: cache(), registries, transport: fast, logger }).pull(ref);
    expect(img.layerDirs).toHaveLength(1);
    const skipped = lines.map((l) => JSON.parse(l) as { mirror?: string; err?: string }).filter((l) => l.mirror);
    expect(skipped[0]).toMatchObject({ mirror: empty.host, err: expect.stringMatching(/manifest 1 not found/) });
  });

  it('a mirror that does not answer at all falls back too', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const registries = parseRegistryConfig({ ...plain(dead), [upstream.host]: { plainHttp: true, mirrors: [{ host: dead }] } });
    expect((await puller(registries).pull(ref)).layerDirs).toHaveLength(1);
  });

  it("the upstream's own failure is the error when every endpoint fails", async () => {
    const registries = parseRegistryConfig({ ...plain(empty.host), [upstream.host]: { plainHttp: true, mirrors: [{ host: empty.host }] } });
    const err = await pullError(puller(registries).pull(`${upstream.host}/team/missing:1`));
    expect(err.kind).toBe('not-found');
    expect(err.message).toMatch(new RegExp(`^${upstream.host}/team/missing: manifest 1 not found`));
  });

  it('a mirror that has the image serves it (the upstream is down), with its prefix', async () => {
    const down = `127.0.0.1:${await freePort()}`;
    const registries = parseRegistryConfig({
      ...plain(mirror.host),
      [down]: { plainHttp: true, mirrors: [{ host: empty.host }, { host: mirror.host, prefix: 'cache' }] },
      ...plain(empty.host),
    });
    const img = await puller(registries).pull(`${down}/team/bb:1`);
    expect(img.reference).toBe(`${down}/team/bb:1`); // cached under the name asked for
  });

  it('capabilities: a pull-only mirror is not asked to resolve a tag, and serves by digest', async () => {
    const down = `127.0.0.1:${await freePort()}`;
    const registries = parseRegistryConfig({
      ...plain(mirror.host),
      ...plain(down),
      [down]: { plainHttp: true, mirrors: [{ host: mirror.host, prefix: 'cache', capabilities: ['pull'] }] },
    });
    const err = await pullError(puller(registries).pull(`${down}/team/bb:1`));
    expect(err.message).toMatch(new RegExp(`^${down}: `)); // the tag went to the (dead) upstream
    const { digest } = await new ImagePuller({ root: cache(), plainHttp: [upstream.host] }).inspect(ref);
    expect((await puller(registries).pull(`${down}/team/bb@${digest}`)).digest).toBe(digest);
  });

  it('a rewrite sends docker.io/library/x to the internal host, under its prefix', async () => {
    const registries = parseRegistryConfig({ ...plain(mirror.host), 'docker.io': { rewrite: { host: mirror.host, prefix: 'dockerhub' } } });
    const img = await puller(registries).pull('rewritten:1');
    expect(img.reference).toBe('docker.io/library/rewritten:1');
    expect(img.layerDirs).toHaveLength(1);
  });

  it('createRegistryReader reads an image through the same configuration', async () => {
    const registries = parseRegistryConfig({ ...plain(mirror.host), 'docker.io': { rewrite: { host: mirror.host, prefix: 'dockerhub' } } });
    const reader = createRegistryReader(registries, { transport: fast });
    try {
      const { source, reference } = reader.open('rewritten:1');
      const m = await source.getManifest(reference.tag!);
      expect(m.digest).toMatch(/^sha256:/);
    } finally {
      await reader.close();
    }
  });
});
