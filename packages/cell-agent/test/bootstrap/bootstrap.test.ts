// The agent's side of the cell bootstrap, over real gRPC/TLS on loopback: the test plays the
// controller with a plain CellBootstrap client and a throwaway CA.
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { CellBootstrapClient, InstallCertificateRequest, RequestCertificateRequest, type RequestCertificateResponse } from '@cello/proto/cell';
import { freePort, startImdsTestDouble, waitFor } from '@cello/testkit';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { parseUserData, prepareCellIdentity, readUserData, startBootstrapServer, type BootstrapServer, type CellUserData } from '../../src/bootstrap/index.js';
import { foreignCsr, makeTestCa, type TestCa } from './test-ca.js';

const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cello-bootstrap-'));
  cleanups.push(() => rm(d, { recursive: true, force: true }));
  return d;
}

function userData(ca: TestCa, over: Partial<CellUserData> = {}): CellUserData {
  return {
    cello: 'cell-bootstrap/v1',
    controllerId: 'ctl-test',
    cellId: 'cell-abc',
    agentPort: 9443,
    caCertPem: ca.certPem,
    token: 'cbt_0123456789abcdef0123456789abcdef',
    tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
    ...over,
  };
}

function client(address: string): CellBootstrapClient {
  const c = new CellBootstrapClient(address, credentials.createSsl(null, null, null, { rejectUnauthorized: false }));
  cleanups.push(async () => c.close());
  return c;
}

function call<Req, Res>(fn: (r: Req, md: Metadata, o: object, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}

async function serve(ud: CellUserData, stateDir: string): Promise<BootstrapServer> {
  const s = await startBootstrapServer({ userData: ud, stateDir, listen: `127.0.0.1:${await freePort()}`, logger });
  cleanups.push(() => s.close());
  return s;
}

const requestCert = (c: CellBootstrapClient, token: string) =>
  call<RequestCertificateRequest, RequestCertificateResponse>(c.requestCertificate.bind(c), RequestCertificateRequest.fromPartial({ token }));
const install = (c: CellBootstrapClient, token: string, certificatePem: string, caPem: string) =>
  call(c.installCertificate.bind(c), InstallCertificateRequest.fromPartial({ token, certificatePem, caPem }));

describe('user data', () => {
  it('names the field that is wrong and refuses private keys', async () => {
    const ca = await makeTestCa();
    const ok = userData(ca);
    expect(parseUserData(JSON.stringify(ok), 'f')).toEqual(ok);
    expect(() => parseUserData('nope', 'f')).toThrow(/f: user data is not JSON/);
    expect(() => parseUserData(JSON.stringify({ ...ok, agentPort: 'x' }), 'f')).toThrow(/field agentPort/);
    expect(() => parseUserData(JSON.stringify({ ...ok, cellId: 'a/b' }), 'f')).toThrow(/field cellId: must be 1-64/);
    expect(() => parseUserData(JSON.stringify({ ...ok, agentConfig: { k: '-----BEGIN PRIVATE KEY-----' } }), 'f')).toThrow(/private key/);
  });

  it('is read from instance metadata with IMDSv2 (session token required)', async () => {
    const ca = await makeTestCa();
    const imds = await startImdsTestDouble({ '/latest/user-data': JSON.stringify(userData(ca)) });
    cleanups.push(() => imds.stop());
    const ud = await readUserData({ imdsUrl: imds.url });
    expect(ud.cellId).toBe('cell-abc');
    expect(imds.tokensIssued).toBe(1);
    expect(imds.unauthorized).toBe(0);
    // The double refuses IMDSv1 (no token), as EC2 does with HttpTokens=required.
    expect((await fetch(`${imds.url}/latest/user-data`)).status).toBe(401);
  });
});

describe('bootstrap listener', () => {
  it('proves the token, answers a CSR for a fresh local key, installs the signed certificate, then stops', async () => {
    const ca = await makeTestCa();
    const dir = await tempDir();
    const ud = userData(ca);
    const s = await serve(ud, dir);
    const c = client(s.address);
    const res = await requestCert(c, ud.token);
    expect(res.cellId).toBe('cell-abc');
    expect(res.csrPem).toContain('BEGIN CERTIFICATE REQUEST');
    const cert = await ca.sign(res.csrPem, { cellId: 'cell-abc' });
    await install(c, ud.token, cert, ca.certPem);
    const files = await s.installed;
    expect(await readFile(files.cert, 'utf8')).toBe(cert);
    expect(await readFile(files.ca, 'utf8')).toBe(ca.certPem);
    const key = await readFile(files.key, 'utf8');
    expect(key).toContain('BEGIN PRIVATE KEY');
    expect((await stat(files.key)).mode & 0o777).toBe(0o600);
    // The listener is gone: the agent serves only mTLS from now on.
    const late = await requestCert(client(s.address), ud.token).catch((e: ServiceError) => e);
    expect((late as ServiceError).code).toBe(status.UNAVAILABLE);
  });

  it('refuses a wrong token, a token spent by an earlier agent process, and an expired token; repeats its CSR to the same token', async () => {
    const ca = await makeTestCa();
    const dir = await tempDir();
    const ud = userData(ca);
    const s = await serve(ud, dir);
    const c = client(s.address);
    const wrong = (await requestCert(c, 'cbt_not-the-token-at-all-000000').catch((e: ServiceError) => e)) as ServiceError;
    expect(wrong.code).toBe(status.PERMISSION_DENIED);
    expect(wrong.details).toMatch(/does not match/);
    const first = await requestCert(c, ud.token);
    // Asked again before a certificate is installed (the controller that asked died): the same
    // CSR, for the same key — nothing new is given away.
    const repeat = await requestCert(c, ud.token);
    expect(repeat.csrPem).toBe(first.csrPem);
    await s.close();

    // The agent restarts before a certificate was installed: the token stays spent.
    const s2 = await serve(ud, dir);
    const again = (await requestCert(client(s2.address), ud.token).catch((e: ServiceError) => e)) as ServiceError;
    expect(again.code).toBe(status.PERMISSION_DENIED);
    expect(again.details).toMatch(/already used/);

    const expired = userData(ca, { cellId: 'cell-old', tokenExpiresAt: new Date(Date.now() - 1000).toISOString() });
    const s3 = await serve(expired, await tempDir());
    const e3 = (await requestCert(client(s3.address), expired.token).catch((e: ServiceError) => e)) as ServiceError;
    expect(e3.code).toBe(status.PERMISSION_DENIED);
    expect(e3.details).toMatch(/expired at/);
  });

  it('refuses certificates for another key, from another CA, for another cell, with several identities or another trust domain, or with a swapped CA', async () => {
    const ca = await makeTestCa();
    const evil = await makeTestCa('Evil CA');
    const ud = userData(ca);
    const s = await serve(ud, await tempDir());
    const c = client(s.address);
    const res = await requestCert(c, ud.token);
    const cases: Array<[string, string, string, RegExp]> = [
      ['other key', await ca.sign(res.csrPem, { cellId: 'cell-abc', publicKeyFrom: await foreignCsr('cell-abc') }), ca.certPem, /not for the key/],
      ['other CA', await evil.sign(res.csrPem, { cellId: 'cell-abc' }), '', /not signed by the controller CA/],
      [
        'other cell',
        await ca.sign(res.csrPem, { cellId: 'cell-xyz' }),
        ca.certPem,
        /must name exactly spiffe:\/\/cello\/cell\/cell-abc as its one URI SAN; it has spiffe:\/\/cello\/cell\/cell-xyz/,
      ],
      // The same CA, but the certificate would also speak for the controller (any peer that
      // takes the first or any URI would see the controller in this cell's key).
      [
        'two identities',
        await ca.sign(res.csrPem, { cellId: 'cell-abc', uris: ['spiffe://cello/cell/cell-abc', 'spiffe://cello/client/controller'] }),
        ca.certPem,
        /exactly spiffe:\/\/cello\/cell\/cell-abc as its one URI SAN; it has spiffe:\/\/cello\/cell\/cell-abc, spiffe:\/\/cello\/client\/controller/,
      ],
      [
        'other trust domain',
        await ca.sign(res.csrPem, { cellId: 'cell-abc', uris: ['spiffe://elsewhere/cell/cell-abc'] }),
        ca.certPem,
        /must name exactly spiffe:\/\/cello\/cell\/cell-abc .*it has spiffe:\/\/elsewhere\/cell\/cell-abc/,
      ],
      ['no identity', await ca.sign(res.csrPem, { cellId: 'cell-abc', uris: [] }), ca.certPem, /must name exactly spiffe:\/\/cello\/cell\/cell-abc .*it has none/],
      ['swapped CA', await evil.sign(res.csrPem, { cellId: 'cell-abc' }), evil.certPem, /ca_pem: differs/],
    ];
    for (const [what, cert, caPem, re] of cases) {
      const e = (await install(c, ud.token, cert, caPem).catch((x: ServiceError) => x)) as ServiceError;
      expect(e.details, what).toMatch(re);
    }
    // A good one still installs afterwards.
    await install(c, ud.token, await ca.sign(res.csrPem, { cellId: 'cell-abc' }), ca.certPem);
    await s.installed;
  });
});

describe('prepareCellIdentity (the serve hook)', () => {
  it('bootstraps once, then reuses the identity on the next start', async () => {
    const ca = await makeTestCa();
    const dir = await tempDir();
    const ud = userData(ca);
    const listen = `127.0.0.1:${await freePort()}`;
    let bs: BootstrapServer | undefined;
    const pending = prepareCellIdentity({ userData: ud, stateDir: dir, listen, logger, onListening: (s) => (bs = s) });
    await waitFor('the bootstrap listener', () => bs, { timeoutMs: 10_000 });
    expect(bs!.address).toBe(listen);
    const c = client(listen);
    const res = await requestCert(c, ud.token);
    await install(c, ud.token, await ca.sign(res.csrPem, { cellId: ud.cellId }), ca.certPem);
    const id = await pending;
    expect(id).toMatchObject({ cellId: 'cell-abc', controllerId: 'ctl-test', listen, bootstrapped: true });
    const again = await prepareCellIdentity({ userData: ud, stateDir: dir, listen, logger });
    expect(again.bootstrapped).toBe(false);
    expect(again.tls).toEqual(id.tls);
  });

  it('takes the trust domain from the user data: installs only its certificate, and reuses only a certificate naming it', async () => {
    const ca = await makeTestCa();
    const dir = await tempDir();
    const ud = userData(ca, { trustDomain: 'prod.example' });
    const listen = `127.0.0.1:${await freePort()}`;
    let bs: BootstrapServer | undefined;
    const pending = prepareCellIdentity({ userData: ud, stateDir: dir, listen, logger, onListening: (s) => (bs = s) });
    await waitFor('the bootstrap listener', () => bs, { timeoutMs: 10_000 });
    const c = client(listen);
    const res = await requestCert(c, ud.token);
    // The default domain is not this CA's: refused.
    const e = (await install(c, ud.token, await ca.sign(res.csrPem, { cellId: 'cell-abc' }), ca.certPem).catch((x: ServiceError) => x)) as ServiceError;
    expect(e.details).toMatch(/must name exactly spiffe:\/\/prod\.example\/cell\/cell-abc as its one URI SAN; it has spiffe:\/\/cello\/cell\/cell-abc/);
    await install(c, ud.token, await ca.sign(res.csrPem, { cellId: 'cell-abc', uris: ['spiffe://prod.example/cell/cell-abc'] }), ca.certPem);
    expect((await pending).bootstrapped).toBe(true);
    expect((await prepareCellIdentity({ userData: ud, stateDir: dir, listen, logger })).bootstrapped).toBe(false);
    // The same files under user data of another trust domain: not this cell's identity, so the
    // agent asks for a new certificate instead of serving with it.
    const moved = { ...ud, trustDomain: 'elsewhere' };
    const stop = new AbortController();
    let again: BootstrapServer | undefined;
    const second = prepareCellIdentity({ userData: moved, stateDir: dir, listen, logger, signal: stop.signal, onListening: (s) => (again = s) });
    second.catch(() => undefined);
    await waitFor('a new bootstrap listener', () => again, { timeoutMs: 10_000 });
    stop.abort();
    await expect(second).rejects.toThrow(/closed before a certificate was installed/);
  });
});
