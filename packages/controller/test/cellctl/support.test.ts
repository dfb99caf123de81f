// cellctl's support commands against a real controller daemon (dist) with local cells, a real
// registry and real cellctl processes: events (and -w), top pods|cells, audit (exec exit codes,
// port-forward), dump — whose archive is searched for a Secret's value and the configuration's
// credentials. Every new RPC refuses a caller without credentials and a user without the role.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { ControllerClient } from '@cello/proto/controller';
import { PodPhase } from '@cello/proto/cell';
import { freePort, makeTestPki, waitFor } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, CONTROLLER_BIN, startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { CA_STORE_KEY, CertificateAuthority } from '../../src/security/ca.js';
import { readEmbeddedKey } from '../../src/api/auth/issue-user.js';
import { apiChannelCredentials } from '../../src/api/auth/index.js';

const SECRET = `s3cr3t-${randomUUID()}`;
let registry: Registry;
let cl: Cluster;
let ca: CertificateAuthority;
let clientKeyPem: string;
const tmp = mkdtempSync(join(tmpdir(), 'cello-support-'));

// bob (group ops-dev) may work with pods in dev, nothing else: not events, metrics, audit or dumps.
const POLICY = [{ groups: ['ops-dev'], namespaces: ['dev'], verbs: ['*'], resources: ['pods'] }];

beforeAll(async () => {
  registry = await startFixtureRegistry();
  const pki = makeTestPki();
  clientKeyPem = readFileSync(pki.client.key, 'utf8');
  // A configuration holding a credential: a registry client key (read from its file into the configuration).
  cl = new Cluster({ registry, warm: 1, api: { policy: POLICY }, registries: { 'private.example:5000': { client: { certFile: pki.client.cert, keyFile: pki.client.key } } } });
  await cl.start();
  ca = await CertificateAuthority.fromStoredRecord(readEmbeddedKey(cl.storeDir, CA_STORE_KEY), readFileSync(cl.keyFile(), 'utf8').trim());
  const manifest = cl.manifest(
    'sleeper',
    `apiVersion: v1
kind: Secret
metadata: { name: creds }
stringData: { token: ${SECRET} }
---
apiVersion: v1
kind: Pod
metadata: { name: sleeper }
spec:
  containers:
  - name: c
    image: IMAGE
    command: [sleep, '600']
    env:
    - name: TOKEN
      valueFrom: { secretKeyRef: { name: creds, key: token } }
`,
  );
  const applied = await cl.cellctl(['apply', '-f', manifest]);
  expect(applied.code, applied.stderr).toBe(0);
  await cl.waitPod('sleeper', 'Running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 120_000);
}, 240_000);

afterAll(async () => {
  // The pods end as a user would end them (their cells terminated by the controller) before the cluster stops.
  if (cl) await cl.cellctl(['delete', 'pod', 'sleeper', 'later', '--grace', '1'], { timeoutMs: 90_000 }).catch(() => undefined);
  await cl?.stop();
  await registry?.server.stop();
  rmSync(tmp, { recursive: true, force: true });
}, 120_000);

function unary(c: ControllerClient, method: string, req: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const fn = (c as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!;
    fn.call(c, req, new Metadata(), { deadline: Date.now() + 10_000 }, (err: ServiceError | null, r: unknown) => (err ? reject(err) : resolve(r)));
  });
}

function streamed(c: ControllerClient, method: string, req: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const s = (c as unknown as Record<string, (r: unknown, o: unknown) => NodeJS.EventEmitter>)[method]!.call(c, req, { deadline: Date.now() + 10_000 });
    s.on('data', () => undefined);
    s.on('end', resolve);
    s.on('error', reject);
  });
}

/** The error a unary or streamed call ends with; undefined if it succeeds. */
async function callError(c: ControllerClient, kind: 'unary' | 'stream', method: string, req: unknown): Promise<ServiceError | undefined> {
  return (kind === 'unary' ? unary(c, method, req) : streamed(c, method, req)).then(
    () => undefined,
    (e: ServiceError) => e,
  );
}

describe('support commands', () => {
  it("cellctl events: a pod's, a cell's and all; -w prints new events as they are recorded", async () => {
    const pod = await cl.pod('sleeper');
    const podEvents = await cl.cellctl(['events', '--pod', 'sleeper']);
    expect(podEvents.code, podEvents.stderr).toBe(0);
    expect(podEvents.stdout).toMatch(/^LAST SEEN\s+TYPE\s+REASON\s+OBJECT\s+SOURCE\s+MESSAGE$/m);
    expect(podEvents.stdout).toMatch(/pod\/sleeper/);
    const cellEvents = await cl.cellctl(['events', '--cell', pod.cellId, '-o', 'json']);
    expect(cellEvents.code, cellEvents.stderr).toBe(0);
    const items = (JSON.parse(cellEvents.stdout) as { items: Array<{ kind: string; name: string }> }).items;
    expect(items.length).toBeGreaterThan(0);
    expect(items.every((e) => e.kind === 'Cell' && e.name === pod.cellId)).toBe(true);
    const all = await cl.cellctl(['events']);
    expect(all.stdout).toMatch(/^NAMESPACE\s+LAST SEEN/m);
    expect(all.stdout).toContain(`cell/${pod.cellId}`);

    // -w: nothing yet for pod "later"; once applied, its events stream in.
    const watch = cl.spawnCellctl(['events', '--pod', 'later', '-w']);
    let out = '';
    watch.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    try {
      await new Promise((r) => setTimeout(r, 1000));
      expect(out).toBe('');
      const later = cl.manifest('later', `apiVersion: v1\nkind: Pod\nmetadata: { name: later }\nspec:\n  containers:\n  - { name: c, image: IMAGE, command: [sleep, '600'] }\n`);
      expect((await cl.cellctl(['apply', '-f', later])).code).toBe(0);
      await waitFor('events of "later" on the watch', () => /pod\/later/.test(out), { timeoutMs: 60_000, intervalMs: 100 });
      expect(out).toMatch(/^LAST SEEN\s+TYPE/m);
    } finally {
      watch.kill();
    }
  }, 120_000);

  it('cellctl top pods and top cells: usage from the agents', async () => {
    const pod = await cl.pod('sleeper');
    const pods = await cl.cellctl(['top', 'pods']);
    expect(pods.code, pods.stderr).toBe(0);
    expect(pods.stdout).toMatch(/^NAME\s+CPU\(cores\)\s+MEMORY\(bytes\)\s+CELL$/m);
    expect(pods.stdout).toMatch(new RegExp(`^sleeper\\s+\\d+m\\s+\\d+Mi\\s+${pod.cellId}$`, 'm'));
    const containers = await cl.cellctl(['top', 'pods', '--containers']);
    expect(containers.stdout).toMatch(/^sleeper\s+c\s+\d+m\s+\d+Mi$/m);
    const cells = await cl.cellctl(['top', 'cells']);
    expect(cells.code, cells.stderr).toBe(0);
    const row = cells.stdout.split('\n').find((l) => l.startsWith(pod.cellId));
    expect(row, cells.stdout).toMatch(/^\S+\s+\d+m\s+\d+%\s+[1-9]\d*Mi\s+\d+%\s+local\.\S+\s+default\/sleeper$/);
  }, 60_000);

  it('cellctl audit: exec sessions with user, command and exit code, and port-forward sessions', async () => {
    const ex = await cl.cellctl(['exec', 'sleeper', '--', 'sh', '-c', 'exit 3']);
    expect(ex.code).toBe(3);
    const missing = await cl.cellctl(['exec', 'sleeper', '--', 'no-such-command']);
    expect(missing.code).toBe(127);
    const port = await freePort();
    const pf = cl.spawnCellctl(['port-forward', 'sleeper', `${port}:8080`]);
    try {
      await waitFor(
        'port-forward listening',
        () =>
          new Promise<boolean>((r) => {
            const s = connect(port, '127.0.0.1', () => {
              s.destroy();
              r(true);
            });
            s.on('error', () => r(false));
          }),
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      await waitFor('the port-forward session recorded', async () => (await cl.cellctl(['audit', 'sleeper', '-o', 'json'])).stdout.includes('"portforward"'), {
        timeoutMs: 30_000,
        intervalMs: 300,
      });
    } finally {
      pf.kill();
    }
    const audit = await cl.cellctl(['audit', 'sleeper']);
    expect(audit.code, audit.stderr).toBe(0);
    expect(audit.stdout).toMatch(/^STARTED\s+USER\s+KIND\s+POD\s+CONTAINER\s+COMMAND\s+RESULT\s+DURATION$/m);
    expect(audit.stdout).toMatch(/^\S+Z\s+e2e-admin\s+exec\s+default\/sleeper\s+c\s+sh -c exit 3\s+exit 3\s+\d+\.\ds$/m);
    expect(audit.stdout).toMatch(/^\S+Z\s+e2e-admin\s+exec\s+default\/sleeper\s+c\s+no-such-command\s+exit 127\s/m);
    expect(audit.stdout).toMatch(/^\S+Z\s+e2e-admin\s+portforward\s+default\/sleeper\s+-\s+port 8080\s/m);
    const json = JSON.parse((await cl.cellctl(['audit', '-A', '-o', 'json'])).stdout) as { items: Array<{ user: string; exitCode?: number; cellId: string }> };
    expect(json.items.find((s) => s.exitCode === 3)).toMatchObject({ user: 'e2e-admin', cellId: (await cl.pod('sleeper')).cellId });
  }, 120_000);

  it("cellctl logs cell/ID: the agent's own log, its tail, then -f follows new lines", async () => {
    const cellId = (await cl.pod('sleeper')).cellId;
    const tail = await cl.cellctl(['logs', `cell/${cellId}`, '--tail', '3']);
    expect(tail.code, tail.stderr).toBe(0);
    const lines = tail.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(JSON.parse(l)).toMatchObject({ app: 'cell-agent' });
    const refused = await cl.cellctl(['logs', `cell/${cellId}`, '--previous']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("--previous: not for a cell agent's log");
    const missing = await cl.cellctl(['logs', 'cell/no-such-cell']);
    expect(missing.stderr).toContain('cell no-such-cell not found');

    const follow = cl.spawnCellctl(['logs', `cell/${cellId}`, '-f', '--tail', '1']);
    let out = '';
    follow.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    try {
      await waitFor('the tail line', () => out.split('\n').length >= 2, { timeoutMs: 20_000, intervalMs: 100 });
      const marker = `marker-${randomUUID()}`;
      expect((await cl.cellctl(['exec', 'sleeper', '--', 'echo', marker])).code).toBe(0);
      await waitFor('the exec session in the followed agent log', () => /"msg":"exec session ended"/.test(out), { timeoutMs: 30_000, intervalMs: 100 });
      expect(out).toContain('"msg":"exec session started"');
    } finally {
      follow.kill();
    }
  }, 90_000);

  it('cellctl dump: one tar.gz with config, store, logs and versions, and no secret value in it', async () => {
    const file = join(tmp, 'dump.tar.gz');
    const r = await cl.cellctl(['dump', '-f', file], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/wrote .*dump\.tar\.gz \(\d+ bytes\)/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const out = join(tmp, 'dump');
    execFileSync('mkdir', ['-p', out]);
    execFileSync('tar', ['-xzf', file, '-C', out]);
    const dir = join(out, 'cello-support');
    expect(readdirSync(dir).sort()).toEqual(['README.txt', 'agents', 'audit.json', 'cells.json', 'config.yaml', 'controller.log', 'events.json', 'pods.json', 'versions.json']);
    const agentLog = readFileSync(join(dir, 'agents', `${(await cl.pod('sleeper')).cellId}.log`), 'utf8');
    expect(agentLog).toContain('"app":"cell-agent"');
    const versions = JSON.parse(readFileSync(join(dir, 'versions.json'), 'utf8')) as { controller: { version: string }; agents: Array<{ cellId: string; version?: string }> };
    expect(versions.controller.version).toMatch(/^\d+\.\d+\.\d+/);
    const cellId = (await cl.pod('sleeper')).cellId;
    expect(versions.agents.find((a) => a.cellId === cellId)?.version).toMatch(/^\d+\.\d+\.\d+/);
    const pods = JSON.parse(readFileSync(join(dir, 'pods.json'), 'utf8')) as Array<{ metadata: { name: string }; secretsAtRest: string }>;
    expect(pods.find((p) => p.metadata.name === 'sleeper')?.secretsAtRest).toBe('sealed');
    expect(readFileSync(join(dir, 'config.yaml'), 'utf8')).toMatch(/keyPem: "?\[redacted\]"?/);
    expect(readFileSync(join(dir, 'controller.log'), 'utf8')).toContain('"msg":"controller listening"');
    expect(readFileSync(join(dir, 'events.json'), 'utf8')).toContain('"sleeper"');

    // No secret anywhere: the Secret's value (plain and base64), the registry client key, the store's encryption key.
    const key = readFileSync(cl.keyFile(), 'utf8').trim();
    const needles = [SECRET, Buffer.from(SECRET).toString('base64'), clientKeyPem.split('\n')[1]!, key];
    const files = readdirSync(dir, { recursive: true, withFileTypes: true }).filter((d) => d.isFile());
    expect(files.length).toBeGreaterThanOrEqual(9);
    for (const d of files) {
      const f = join(d.parentPath, d.name);
      const text = readFileSync(f, 'utf8');
      for (const n of needles) expect(text.includes(n), `${f} contains a secret`).toBe(false);
    }
    const raw = execFileSync('sh', ['-c', `gzip -dc ${file}`]).toString('latin1');
    for (const n of needles) expect(raw.includes(n)).toBe(false);
  }, 120_000);
});

describe('support RPCs: who may call', () => {
  const calls: Array<[string, 'unary' | 'stream', unknown]> = [
    ['topPods', 'unary', { namespace: 'default' }],
    ['topCells', 'unary', {}],
    ['listAudit', 'unary', { pod: { namespace: 'default', name: '' }, limit: 0 }],
    ['listEvents', 'unary', { cell: 'x', limit: 0 }],
    ['watchEvents', 'stream', { pod: { namespace: 'default', name: 'sleeper' }, cell: '', limit: 0 }],
    ['supportBundle', 'stream', { eventLimit: 0 }],
    ['cellLogs', 'stream', { cellId: 'x', options: { tailLines: 0, follow: false } }],
  ];

  it('a caller without credentials is UNAUTHENTICATED on each', async () => {
    const c = new ControllerClient(cl.server, apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain }));
    try {
      for (const [method, kind, req] of calls) {
        const err = await callError(c, kind, method, req);
        expect(err?.code, method).toBe(Status.UNAUTHENTICATED);
      }
    } finally {
      c.close();
    }
  });

  it('a user without the role is PERMISSION_DENIED on each, through the gRPC API and cellctl', async () => {
    const bob = await ca.issueUserCertificate('bob', { groups: ['ops-dev'] });
    const c = new ControllerClient(cl.server, apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain, certPem: bob.certPem, keyPem: bob.keyPem }));
    try {
      for (const [method, kind, req] of calls) {
        const err = await callError(c, kind, method, req);
        expect(err?.code, method).toBe(Status.PERMISSION_DENIED);
        expect(err?.details, method).toMatch(/user bob/);
      }
      // Everything in every namespace: bob's top pods -A shows none of default's pods.
      const all = (await unary(c, 'topPods', { namespace: '' })) as { pods: unknown[] };
      expect(all.pods).toEqual([]);
      const audit = (await unary(c, 'listAudit', { limit: 0 })) as { sessions: unknown[] };
      expect(audit.sessions).toEqual([]);
    } finally {
      c.close();
    }
    const bobFile = join(tmp, 'bob.yaml');
    const issued = execFileSync(process.execPath, [CONTROLLER_BIN, 'issue-user', 'bob', '--group', 'ops-dev', '-c', cl.configPath, '-o', bobFile, '--ttl', '1h'], {
      encoding: 'utf8',
    });
    expect(issued).toContain('wrote');
    for (const args of [['top', 'cells'], ['audit'], ['events'], ['dump', '-f', join(tmp, 'bob.tar.gz')], ['logs', 'cell/x']]) {
      const r = await cl.cellctl(['--config', bobFile, ...args]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/forbidden: user bob \(groups: ops-dev\) may not/);
    }
  }, 60_000);
});
