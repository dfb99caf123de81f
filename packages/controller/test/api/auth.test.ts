// The controller API as an attacker meets it: a real controller daemon (dist) serving TLS with
// its CA, real cellctl processes, real gRPC clients presenting no credentials, another CA's
// certificate, a cell's certificate, a bearer token; then the positive paths (the admin config
// the controller wrote, ~/.cello/config with no flag, `controller issue-user` for a second user
// limited by api.policy), the caller's name in the agent's audit log, and the bound on what a
// stream may queue before its target frame.
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { credentials, Metadata, status as Status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { stringify } from 'yaml';
import { ControllerClient } from '@cello/proto/controller';
import { ExecInput, PodPhase } from '@cello/proto/cell';
import { freePort, waitFor } from '@cello/testkit';
import { Cluster, CONTROLLER_BIN, startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { CA_STORE_KEY, CertificateAuthority } from '../../src/security/ca.js';
import { openStore } from '../../src/store/index.js';
import { readEmbeddedKey } from '../../src/api/auth/issue-user.js';
import { apiChannelCredentials } from '../../src/api/auth/index.js';
import { MAX_PENDING_FRAMES } from '../../src/api/server.js';

let registry: Registry;
let cl: Cluster;
let ca: CertificateAuthority;
const tmp = mkdtempSync(join(tmpdir(), 'cello-api-auth-'));

const POLICY = [
  // alice (group dev) may work with pods in namespace dev, but not exec into them.
  { groups: ['dev'], namespaces: ['dev'], verbs: ['get', 'list', 'watch', 'create', 'delete', 'logs'] },
];

beforeAll(async () => {
  registry = await startFixtureRegistry();
  cl = new Cluster({ registry, warm: 1, api: { policy: POLICY } });
  await cl.start();
  // The test's own handle on the controller's CA: read from the store the running controller
  // holds locked, as `controller issue-user` does.
  ca = await CertificateAuthority.fromStoredRecord(readEmbeddedKey(cl.storeDir, CA_STORE_KEY), readFileSync(cl.keyFile(), 'utf8').trim());
}, 120_000);

afterAll(async () => {
  await cl?.stopController();
  if (cl) {
    const owned = await cl.provider.listOwned(cl.controllerId);
    if (owned.length) await cl.provider.terminate(owned.map((i) => i.instanceId));
    await cl.provider.close();
  }
  await registry?.server.stop();
  rmSync(tmp, { recursive: true, force: true });
  if (cl) rmSync(cl.dir, { recursive: true, force: true });
}, 120_000);

function client(creds: ChannelCredentials): ControllerClient {
  return new ControllerClient(cl.server, creds);
}

function unary<T>(c: ControllerClient, method: string, req: unknown, md = new Metadata()): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = (c as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!;
    fn.call(c, req, md, { deadline: Date.now() + 10_000 }, (err: ServiceError | null, r: T) => (err ? reject(err) : resolve(r)));
  });
}

async function refused(p: Promise<unknown>): Promise<ServiceError> {
  const err = await p.then(
    () => undefined,
    (e: ServiceError) => e,
  );
  if (!err) throw new Error('the call was allowed');
  return err;
}

/** TLS trusting the controller's CA, with this client certificate (or none). */
function tls(cert?: { certPem: string; keyPem: string }): ChannelCredentials {
  return apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain, ...(cert ?? {}) });
}

describe('controller API: who may call', () => {
  it('a call without credentials is UNAUTHENTICATED, and says how to get credentials', async () => {
    const c = client(tls());
    const err = await refused(unary(c, 'listPods', { namespace: 'default' }));
    c.close();
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect(err.details).toMatch(/no credentials .*: get credentials with `controller issue-user/);
  });

  it('plaintext does not reach the API at all', async () => {
    const c = client(credentials.createInsecure());
    const err = await refused(unary(c, 'version', {}));
    c.close();
    expect(err.code).toBe(Status.UNAVAILABLE);
  });

  it('a certificate of another CA is refused, even naming an admin of system:masters', async () => {
    const otherDir = join(tmp, 'other-ca');
    const store = await openStore({ kind: 'embedded', dir: otherDir });
    const other = await CertificateAuthority.loadOrCreate({ store, encryptionKey: Buffer.alloc(32, 7) });
    const forged = await other.issueUserCertificate('e2e-admin', { groups: ['system:masters'] });
    await store.close();
    const c = client(tls(forged));
    const err = await refused(unary(c, 'listPods', { namespace: 'default' }));
    c.close();
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect(err.details).toMatch(/no credentials \(a client certificate this controller's CA did not issue for client use counts as none\)/);
  });

  it("a cell's certificate, and the controller's own client certificate, are not users", async () => {
    const cell = await ca.issueCellCertificate({ cellId: 'cell-x' });
    let c = client(tls(cell));
    let err = await refused(unary(c, 'listPods', { namespace: 'default' }));
    c.close();
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    // Cell certificates are for serving only: TLS does not take one as a client's.
    expect(err.details).toMatch(/no credentials/);
    const ctl = await ca.issueClientCertificate('controller');
    c = client(tls(ctl));
    err = await refused(unary(c, 'listPods', { namespace: 'default' }));
    c.close();
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect(err.details).toMatch(/names spiffe:\/\/cello\/client\/controller, not a user/);
  });

  it('a bearer token is refused (no TokenReview outside a cluster)', async () => {
    const c = client(tls());
    const md = new Metadata();
    md.set('authorization', 'Bearer not-a-real-token');
    const err = await refused(unary(c, 'listPods', { namespace: 'default' }, md));
    c.close();
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect(err.details).toMatch(/bearer tokens are not accepted here/);
  });

  it('cellctl finds ~/.cello/config with no flag; without any configuration it says where to get one', async () => {
    const home = join(tmp, 'home');
    mkdirSync(join(home, '.cello'), { recursive: true });
    cpSync(cl.cellctlConfig, join(home, '.cello', 'config'));
    // The controller wrote the admin's credentials for the owner only.
    expect(statSync(cl.cellctlConfig).mode & 0o777).toBe(0o600);
    const env = { HOME: home, CELLO_CONFIG: '', CELLO_CONTROLLER: '' };
    const ok = await cl.cellctl(['get', 'pods'], { env });
    expect(ok.code, ok.stderr).toBe(0);
    const contexts = await cl.cellctl(['config', 'get-contexts'], { env });
    expect(contexts.stdout).toMatch(new RegExp(`^\\*\\s+${cl.controllerId}\\s+127\\.0\\.0\\.1:${cl.apiPort}\\s+e2e-admin@`, 'm'));
    const view = await cl.cellctl(['config', 'view'], { env });
    expect(view.stdout).toContain('client-key-data: DATA+OMITTED');
    expect(view.stdout).not.toContain('LS0t'); // no PEM, base64 or not
    const use = await cl.cellctl(['config', 'use-context', 'nope'], { env });
    expect(use.stderr).toMatch(/no context named "nope"/);
    const none = await cl.cellctl(['get', 'pods'], { env: { ...env, HOME: join(tmp, 'nohome') } });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no cellctl configuration at .*nohome\/\.cello\/config: `npm start` writes one .*controller issue-user/);
  });

  it('controller issue-user (while the controller runs): a second user, limited by api.policy', async () => {
    const alice = join(tmp, 'alice.yaml');
    const issued = await run(process.execPath, [CONTROLLER_BIN, 'issue-user', 'alice', '--group', 'dev', '-c', cl.configPath, '-o', alice, '--ttl', '1h']);
    expect(issued.code, issued.stderr).toBe(0);
    expect(issued.stdout).toMatch(/wrote .*alice\.yaml .*user alice, groups dev/);
    const as = (args: string[]) => cl.cellctl(['--config', alice, ...args]);

    const listDev = await as(['get', 'pods', '-n', 'dev']);
    expect(listDev.code, listDev.stderr).toBe(0);
    const listDefault = await as(['get', 'pods']);
    expect(listDefault.code).toBe(1);
    expect(listDefault.stderr).toMatch(/forbidden: user alice \(groups: dev\) may not list pods in namespace default: no api.policy rule allows it/);
    const cells = await as(['get', 'cells']);
    expect(cells.stderr).toMatch(/may not list cells \(cluster-scoped\)/);

    // The namespace an apply is checked against is the manifest's, not the -n flag's.
    const manifest = join(tmp, 'ns-default.yaml');
    writeFileSync(
      manifest,
      stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'sneaky', namespace: 'default' }, spec: { containers: [{ name: 'c', image: registry.image }] } }),
    );
    const sneaky = await as(['-n', 'dev', 'apply', '--dry-run', '-f', manifest]);
    expect(sneaky.code).toBe(1);
    expect(sneaky.stderr).toMatch(/user alice .* may not create pods in namespace default/);
    writeFileSync(manifest, stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'fine' }, spec: { containers: [{ name: 'c', image: registry.image }] } }));
    const fine = await as(['-n', 'dev', 'apply', '--dry-run', '-f', manifest]);
    expect(fine.code, fine.stderr).toBe(0);

    // Streams too: exec is not among alice's verbs.
    const ex = await as(['-n', 'dev', 'exec', 'anything', '--', 'true']);
    expect(ex.code).toBe(1);
    expect(ex.stderr).toMatch(/user alice .* may not exec pods in namespace dev/);
  }, 60_000);

  it('a stream that queues frames before its target is ended with RESOURCE_EXHAUSTED, and the controller does not hold them', async () => {
    const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${cl.controller!.pid}/status`, 'utf8'))![1]) * 1024;
    const before = rss();
    const c = client(cl.apiCredentials());
    const s = c.exec();
    const ended = new Promise<ServiceError>((resolve) => {
      s.on('error', resolve);
      s.on('data', () => undefined);
    });
    // 96 MiB of stdin, and never a target frame.
    const chunk = Buffer.alloc(256 * 1024, 1);
    for (let i = 0; i < 384; i++) s.write({ frame: { $case: 'input', value: ExecInput.fromPartial({ frame: { $case: 'stdin', value: chunk } }) } });
    const err = await Promise.race([ended, new Promise<undefined>((r) => setTimeout(() => r(undefined), 20_000))]);
    const grown = rss() - before;
    c.close();
    expect(err?.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(err?.details).toMatch(new RegExp(`before the target frame the stream queued more than ${MAX_PENDING_FRAMES} frames or 1048576 bytes`));
    expect(grown).toBeLessThan(48 * 1024 * 1024);
  }, 40_000);

  it("exec records the authenticated user in the agent's audit log, beside the controller as peer", async () => {
    writeFileSync(
      join(tmp, 'sleeper.yaml'),
      stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'sleeper' }, spec: { containers: [{ name: 'c', image: registry.image, command: ['sleep', '600'] }] } }),
    );
    const applied = await cl.cellctl(['apply', '-f', join(tmp, 'sleeper.yaml')]);
    expect(applied.code, applied.stderr).toBe(0);
    await cl.waitPod('sleeper', 'Running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
    const ex = await cl.cellctl(['exec', 'sleeper', '--', 'echo', 'audited']);
    expect(ex.code, ex.stderr).toBe(0);
    const records = await waitFor(
      'the audit record',
      () => {
        const found = findFiles(cl.cellsRoot, 'audit.jsonl').flatMap((f) =>
          readFileSync(f, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Record<string, unknown>),
        );
        return found.some((r) => JSON.stringify(r.command) === '["echo","audited"]') ? found : undefined;
      },
      { timeoutMs: 10_000 },
    );
    const start = records.find((r) => JSON.stringify(r.command) === '["echo","audited"]')!;
    expect(start.user).toBe('e2e-admin');
    expect(start.peer).toMatch(/^spiffe:\/\/cello\/client\/controller /);
    // A list over every namespace shows a user only the namespaces the policy gives it.
    const all = await cl.cellctl(['get', 'pods', '-A', '-o', 'json']);
    expect(all.stdout).toContain('"sleeper"');
    const alices = await cl.cellctl(['--config', join(tmp, 'alice.yaml'), 'get', 'pods', '-A', '-o', 'json']);
    expect(alices.code, alices.stderr).toBe(0);
    expect(alices.stdout).not.toContain('"sleeper"');
  }, 150_000);
});

describe('controller start: plaintext', () => {
  it('api.insecure on a non-loopback address is refused at start, naming the field', async () => {
    const dir = mkdtempSync(join(tmp, 'plain-'));
    const cfg = join(dir, 'c.yaml');
    writeFileSync(
      cfg,
      stringify({
        controllerId: 'plain',
        api: { listen: `0.0.0.0:${await freePort()}`, insecure: true },
        metrics: { listen: `127.0.0.1:${await freePort()}` },
        store: { kind: 'embedded', dir: join(dir, 'store') },
        provider: { kind: 'local', root: join(dir, 'cells') },
        security: { mode: 'insecure-dev' },
      }),
    );
    const r = await run(process.execPath, [CONTROLLER_BIN, '-c', cfg]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/api\.listen: 0\.0\.0\.0:\d+ is not a loopback address; plaintext \(api\.insecure: true\) is only allowed on 127\.0\.0\.1/);
  });
});

function findFiles(dir: string, name: string): string[] {
  const out: string[] = [];
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory() && !e.isSymbolicLink() && e.name !== 'rootfs' && e.name !== '.images') out.push(...findFiles(p, name));
    else if (e.name === name) out.push(p);
  }
  return out;
}

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${args.join(' ')}: still running after 30 s; output: ${stdout}${stderr}`));
    }, 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}
