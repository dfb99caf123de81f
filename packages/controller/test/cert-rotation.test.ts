// Certificate rotation against real agents (local provider, runc): with lifetimes of seconds,
// the controller renews each cell's certificate in place (the agent makes a fresh key and sends
// a CSR over mTLS) and its own client certificate, while the pod keeps running and stays
// reachable; certificates from another CA, expired ones and other cells' are refused. On the
// same cluster (certificates still rotating underneath), the streams through cellctl that had no
// end-to-end test: `logs -f`, `attach -i`, `logs --previous`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { tmpdir } from 'node:os';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { CellAgentClient, CellCertificatesClient, GetInfoRequest, PodPhase, RequestRenewalRequest, type AgentInfo } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { openStore } from '../src/store/index.js';
import { CertificateAuthority, cellServerIdentityCheck, type IssuedCertificate } from '../src/security/index.js';
import { Cluster, filesHold, podWithSecret, secretForms, startFixtureRegistry, type Registry } from './helpers/cluster.js';

const SECRET = `tok-${Math.random().toString(36).slice(2)}${Date.now()}`;
const LOOP = podWithSecret('steady', SECRET, 'echo up; while true; do sleep 1; done');

const TALK = `apiVersion: v1
kind: Pod
metadata: { name: talk }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: IMAGE
    stdin: true
    command: ["sh", "-c", "echo instance-up; while read l; do if [ \\"$l\\" = quit ]; then exit 3; fi; echo got:$l; done; echo stdin-closed; sleep 3600"]
  - name: ticker
    image: IMAGE
    command: ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]
`;

const TTL = 5;

interface Dial {
  info?: AgentInfo;
  err?: ServiceError;
  served?: PeerCertificate;
}

/** One fresh connection to the agent (a new TLS handshake), GetInfo on it. */
async function dial(address: string, cellId: string, caPem: string, client: IssuedCertificate): Promise<Dial> {
  const out: Dial = {};
  const check = cellServerIdentityCheck(cellId);
  const creds = credentials.createSsl(Buffer.from(caPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
    checkServerIdentity: (host, cert) => {
      out.served = cert;
      return check(host, cert);
    },
  });
  const c = new CellAgentClient(address, creds, { 'grpc.ssl_target_name_override': cellId, 'grpc.default_authority': cellId });
  try {
    out.info = await new Promise<AgentInfo>((res, rej) =>
      c.getInfo(GetInfoRequest.fromPartial({}), new Metadata(), { deadline: Date.now() + 5000 }, (err, r) => (err ? rej(err) : res(r))),
    );
  } catch (err) {
    out.err = err as ServiceError;
  } finally {
    c.close();
  }
  return out;
}

let registry: Registry;
beforeAll(async () => {
  registry = await startFixtureRegistry();
}, 120_000);
afterAll(async () => {
  await registry?.server.stop();
});

describe('mTLS cells with certificates of seconds (local provider, real agents)', () => {
  let cl: Cluster;
  let ca: CertificateAuthority;
  let foreign: CertificateAuthority;
  let expiring: IssuedCertificate;
  const scratch = mkdtempSync(join(tmpdir(), 'cello-rot-'));

  beforeAll(async () => {
    cl = new Cluster({ registry, security: { cellCertificateTtlSeconds: TTL, controllerCertificateTtlSeconds: TTL, rotationCheckSeconds: 0.5 } });
    // The test creates the CA in the controller's store first, so it can issue client
    // certificates of its own from the same CA (the controller loads it at start).
    const store = await openStore({ kind: 'embedded', dir: cl.storeDir });
    ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: readFileSync(cl.keyFile(), 'utf8') });
    await store.close();
    const other = await openStore({ kind: 'embedded', dir: join(scratch, 'other') });
    foreign = await CertificateAuthority.loadOrCreate({ store: other, encryptionKey: Buffer.alloc(32, 7) });
    await other.close();
    // Expires while the test runs: refused at the end.
    expiring = await ca.issueClientCertificate('controller', { ttlSeconds: 5 });
    await cl.start();
  }, 90_000);
  afterAll(async () => {
    await cl?.stop();
    rmSync(scratch, { recursive: true, force: true });
  }, 60_000);

  it('renews cell and controller certificates in place; the pod keeps running and stays reachable', async () => {
    await cl.cellctl(['apply', '-f', cl.manifest('steady', LOOP)]);
    const pod = await cl.waitPod('steady', 'running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 60_000);
    const cellId = pod.cellId;
    const certFile = join(cl.cellsRoot, cellId, 'tls', 'cell.crt');
    const keyFile = join(cl.cellsRoot, cellId, 'tls', 'cell.key');
    const pid = cl.agentPid(cellId);
    const firstKey = readFileSync(keyFile, 'utf8');
    const firstSerial = new X509Certificate(readFileSync(certFile)).serialNumber;
    const serials = new Set<string>([firstSerial]);
    let lastNotAfter = Date.parse(new X509Certificate(readFileSync(certFile)).validTo);

    // Three renewals, each later than the last, all while the agent process stays the same.
    await waitFor(
      'three cell certificate renewals',
      () => {
        const c = new X509Certificate(readFileSync(certFile));
        if (!serials.has(c.serialNumber)) {
          expect(Date.parse(c.validTo)).toBeGreaterThan(lastNotAfter);
          lastNotAfter = Date.parse(c.validTo);
          serials.add(c.serialNumber);
        }
        return serials.size >= 4;
      },
      { timeoutMs: 40_000, intervalMs: 200 },
    );
    expect(cl.agentPid(cellId)).toBe(pid);
    // The agent made the new key itself; the controller's original key is gone.
    expect(readFileSync(keyFile, 'utf8')).not.toBe(firstKey);
    expect(cl.controllerLog).toMatch(/controller client certificate renewed/);

    // The pod never restarted and is reachable through the controller on fresh connections.
    const now = await cl.pod('steady');
    expect(now.status?.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(now.cellId).toBe(cellId);
    expect(now.status!.containerStatuses[0]!.restartCount).toBe(0);
    const exec = await cl.cellctl(['exec', 'steady', '--', 'sh', '-c', 'echo still-here $TOKEN']);
    expect(exec.stdout).toBe(`still-here ${SECRET}\n`);
    expect(exec.code).toBe(0);
    const logs = await cl.cellctl(['logs', 'steady']);
    expect(logs.stdout).toContain('up');

    // A new handshake is served the current (renewed) certificate, which names this cell.
    const port = (JSON.parse(readFileSync(join(cl.cellsRoot, cellId, 'instance.json'), 'utf8')) as { port: number }).port;
    const address = `127.0.0.1:${port}`;
    const fresh = await ca.issueClientCertificate('controller', { ttlSeconds: 60 });
    const ok = await dial(address, cellId, ca.certPem, fresh);
    expect(ok.err).toBeUndefined();
    expect(ok.info?.cellId).toBe(cellId);
    serials.add(new X509Certificate(readFileSync(certFile)).serialNumber);
    expect(ok.served!.serialNumber).not.toBe(firstSerial);
    expect(serials.has(ok.served!.serialNumber)).toBe(true);

    // Refused: a client certificate from another CA, and one of ours that has expired.
    const unknown = await dial(address, cellId, ca.certPem, await foreign.issueClientCertificate('controller', { ttlSeconds: 60 }));
    expect(unknown.err?.code).toBe(status.UNAVAILABLE);
    await waitFor('the short client certificate to expire', () => Date.now() > Date.parse(new X509Certificate(expiring.certPem).validTo) + 1000, { timeoutMs: 10_000 });
    const expired = await dial(address, cellId, ca.certPem, expiring);
    expect(expired.err?.code).toBe(status.UNAVAILABLE);
    expect(expired.info).toBeUndefined();

    // Another cell's certificate (valid, same CA) may not even complete TLS as a client: cell
    // certificates serve only, and the agent answers only the controller.
    const impostor = await ca.issueCellCertificate({ cellId: 'cell-impostor', ttlSeconds: 60 });
    const creds = credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(impostor.keyPem), Buffer.from(impostor.certPem));
    const certs = new CellCertificatesClient(address, creds, { 'grpc.ssl_target_name_override': cellId, 'grpc.default_authority': cellId });
    try {
      const err = await new Promise<ServiceError | undefined>((res) =>
        certs.requestRenewal(RequestRenewalRequest.fromPartial({}), new Metadata(), { deadline: Date.now() + 5000 }, (e) => res(e ?? undefined)),
      );
      expect(err?.code).toBe(status.UNAVAILABLE);
    } finally {
      certs.close();
    }

    // The secret reached the container, but the controller's store holds it only sealed.
    expect(filesHold(cl.storeDir, secretForms(SECRET))).toBe(false);

    const del = await cl.cellctl(['delete', 'pod', 'steady', '--grace', '1'], { timeoutMs: 60_000 });
    expect(del.code).toBe(0);
  }, 150_000);

  // The streams run while certificates keep rotating underneath (controller and cell).
  it('cellctl logs -f, attach -i and logs --previous, end to end', async () => {
    await cl.cellctl(['apply', '-f', cl.manifest('talk', TALK)]);
    await cl.waitPod(
      'talk',
      'both containers running',
      (p) =>
        p.status?.phase === PodPhase.POD_PHASE_RUNNING && p.status.containerStatuses.length === 2 && p.status.containerStatuses.every((c) => c.state?.state?.$case === 'running'),
      60_000,
    );

    // logs -f: lines keep arriving after the command started, in order, none twice.
    const follow = cl.spawnCellctl(['logs', 'talk', '-c', 'ticker', '-f']);
    let followed = '';
    follow.stdout!.on('data', (b: Buffer) => (followed += b.toString()));
    try {
      const first = await waitFor('first followed line', () => /tick-(\d+)\n/.exec(followed)?.[1], { timeoutMs: 15_000 });
      const from = Number(first);
      await waitFor('five more lines, followed live', () => followed.includes(`tick-${from + 5}\n`), { timeoutMs: 15_000 });
      const seen = [...followed.matchAll(/tick-(\d+)/g)].map((m) => Number(m[1]));
      expect(seen).toEqual(Array.from({ length: seen.length }, (_, i) => seen[0]! + i));
      expect(follow.exitCode).toBeNull();
    } finally {
      follow.kill('SIGTERM');
    }

    // attach -i: the container's own stdin and stdout; the session ends when the instance does.
    const attach = cl.spawnCellctl(['attach', 'talk', '-c', 'echo', '-i'], { stdin: true });
    let attached = '';
    let attachErr = '';
    attach.stdout!.on('data', (b: Buffer) => (attached += b.toString()));
    attach.stderr!.on('data', (b: Buffer) => (attachErr += b.toString()));
    const attachExit = new Promise<number | null>((r) => attach.on('exit', (c) => r(c)));
    try {
      // Lines sent before the session is up are not lost: the stream carries them in order.
      attach.stdin!.write('hello\n');
      await waitFor('the container answers through attach', () => attached.includes('got:hello\n'), { timeoutMs: 15_000 }).catch((err: Error) => {
        throw new Error(`${err.message}; stdout=${JSON.stringify(attached)} stderr=${JSON.stringify(attachErr)}`);
      });
      attach.stdin!.write('quit\n');
      const code = await Promise.race([attachExit, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
      // The session ends with the instance, and cellctl exits with the container's own code.
      expect(code).toBe(3);
    } finally {
      attach.kill('SIGTERM');
    }

    // The instance that talked exited 3; --previous shows its log, the new instance's log does not have it.
    await cl.waitPod(
      'talk',
      'echo restarted after exit 3',
      (p) => {
        const c = p.status?.containerStatuses.find((x) => x.name === 'echo');
        return !!c && c.restartCount >= 1 && c.lastState?.state?.$case === 'terminated' && c.lastState.state.value.exitCode === 3;
      },
      60_000,
    );
    const previous = await cl.cellctl(['logs', 'talk', '-c', 'echo', '--previous']);
    expect(previous.code).toBe(0);
    expect(previous.stdout).toContain('instance-up\n');
    expect(previous.stdout).toContain('got:hello\n');
    const current = await waitFor(
      'the new instance logged',
      async () => {
        const r = await cl.cellctl(['logs', 'talk', '-c', 'echo']);
        return r.stdout.includes('instance-up') ? r : undefined;
      },
      { timeoutMs: 15_000 },
    );
    expect(current.stdout).not.toContain('got:hello');
    // A container that never restarted has no previous log: an error, not an empty success.
    const none = await cl.cellctl(['logs', 'talk', '-c', 'ticker', '--previous']);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/previous/i);

    const del = await cl.cellctl(['delete', 'pod', 'talk', '--grace', '1'], { timeoutMs: 60_000 });
    expect(del.code).toBe(0);
  }, 150_000);
});
