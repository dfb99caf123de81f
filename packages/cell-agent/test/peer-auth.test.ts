// Only the controller drives an agent (server/peer-auth.ts): the real daemon (dist/cli.js) with
// mTLS, called with certificates of its own CA that belong to someone else — another cell (the
// key a cell holds, or a local cell's directory), an API user, the controller's name in another
// trust domain, a certificate naming two identities. Every RPC of every service is refused
// before its handler runs, and the stream port refuses them even with a valid ticket.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import {
  ApplyPodRequest,
  CellAgentClient,
  CellCertificatesClient,
  ConfigureRegistriesRequest,
  DeletePodRequest,
  GetInfoRequest,
  GetStatusRequest,
  ListAuditRequest,
  LogsRequest,
  Pod,
  PortForwardTicketRequest,
  PullImageRequest,
  RequestRenewalRequest,
  StatsRequest,
  WatchStatusRequest,
  type GetStatusResponse,
  type PortForwardTicketResponse,
} from '@cello/proto/cell';
import { HealthCheckRequest, HealthClient } from '@cello/proto/health';
import { freePort, requireCommand } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentCredentials, connectAgent, type ClientTls } from '../src/ctl/client.js';
import { openStreamConnection, StreamRefusedError } from '../src/portforward/stream-client.js';
import { makePki, type Pki } from './helpers/certs.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const DEADLINE_MS = 10_000;
let pki: Pki;
const procs = new Set<ChildProcess>();
let addr: string;
const dirs: string[] = [];

function tlsOf(id: { cert: string; key: string }): ClientTls {
  return { cert: id.cert, key: id.key, ca: pki.ca };
}

/** Starts `cell-agent serve` and resolves with its address, or rejects with its stderr when it exits. */
function serve(args: string[]): Promise<{ p: ChildProcess; address: string }> {
  const stateDir = mkdtempSync(join(tmpdir(), 'cello-peer-auth-'));
  dirs.push(stateDir);
  const p = spawn(
    process.execPath,
    [CLI, 'serve', '--state-dir', stateDir, '--run-dir', join(stateDir, 'run'), '--cgroup-parent', `/cello-test/peer-auth-${process.pid}`, ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CELLO_LOG_LEVEL: 'warn' },
    },
  );
  procs.add(p);
  p.on('exit', () => procs.delete(p));
  let err = '';
  let out = '';
  p.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`agent did not start within 15 s: ${err}`));
    }, 15_000);
    p.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /listening (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve({ p, address: m[1]! });
      }
    });
    p.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`agent exited with ${code}: ${err}`));
    });
  });
}

function unary<Res>(fn: (req: object, md: Metadata, o: { deadline: number }, cb: (e: ServiceError | null, r: Res) => void) => unknown, req: object): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, new Metadata(), { deadline: Date.now() + DEADLINE_MS }, (e, r) => (e ? reject(e) : resolve(r))));
}

/** The status a streaming call ends with (the client sends nothing: the refusal must not need a message). */
function streamStatus(call: {
  on(ev: 'error', f: (e: ServiceError) => void): unknown;
  on(ev: 'status', f: (s: { code: number; details: string }) => void): unknown;
  cancel(): void;
}): Promise<{ code: number; details: string }> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      call.cancel();
      reject(new Error(`no status within ${DEADLINE_MS} ms`));
    }, DEADLINE_MS);
    call.on('error', (e) => {
      clearTimeout(t);
      resolve({ code: e.code, details: e.details });
    });
  });
}

// A configuration an attacker would like a cell to pull with: its own mirror for docker.io.
const REGISTRIES_JSON = JSON.stringify({ registries: { 'docker.io': { mirrors: [{ host: 'attacker.example' }] } } });

/** Every RPC on the agent's port, as [name, promise of its final status]. */
function everyRpc(c: CellAgentClient, tls: ClientTls): Array<[string, Promise<{ code: number; details: string }>]> {
  const creds = agentCredentials(tls);
  const health = new HealthClient(addr, creds);
  const certs = new CellCertificatesClient(addr, creds);
  const settle = (p: Promise<unknown>) =>
    p.then(
      () => ({ code: status.OK, details: '' }),
      (e: ServiceError) => ({ code: e.code, details: e.details }),
    );
  const pod = Pod.fromPartial({ metadata: { name: 'stolen', namespace: 'default', uid: 'u1' }, spec: { containers: [{ name: 'c', image: 'busybox', command: ['sh'] }] } });
  const calls: Array<[string, Promise<{ code: number; details: string }>]> = [
    ['ApplyPod', settle(unary(c.applyPod.bind(c) as never, ApplyPodRequest.fromPartial({ pod, generation: 1 })))],
    ['DeletePod', settle(unary(c.deletePod.bind(c) as never, DeletePodRequest.fromPartial({})))],
    ['GetStatus', settle(unary(c.getStatus.bind(c) as never, GetStatusRequest.fromPartial({})))],
    ['GetInfo', settle(unary(c.getInfo.bind(c) as never, GetInfoRequest.fromPartial({})))],
    ['PortForwardTicket', settle(unary(c.portForwardTicket.bind(c) as never, PortForwardTicketRequest.fromPartial({ port: 80 })))],
    ['Stats', settle(unary(c.stats.bind(c) as never, StatsRequest.fromPartial({})))],
    ['PullImage', settle(unary(c.pullImage.bind(c) as never, PullImageRequest.fromPartial({ image: 'busybox' })))],
    ['ListAudit', settle(unary(c.listAudit.bind(c) as never, ListAuditRequest.fromPartial({})))],
    ['ConfigureRegistries', settle(unary(c.configureRegistries.bind(c) as never, ConfigureRegistriesRequest.fromPartial({ registriesJson: REGISTRIES_JSON })))],
    ['WatchStatus', streamStatus(c.watchStatus(WatchStatusRequest.fromPartial({})))],
    ['Logs', streamStatus(c.logs(LogsRequest.fromPartial({ container: 'c' })))],
    ['Exec', streamStatus(c.exec())],
    ['Attach', streamStatus(c.attach())],
    ['PortForward', streamStatus(c.portForward())],
    ['Health.Check', settle(unary(health.check.bind(health) as never, HealthCheckRequest.fromPartial({ service: '' })))],
    ['CellCertificates.RequestRenewal', settle(unary(certs.requestRenewal.bind(certs) as never, RequestRenewalRequest.fromPartial({})))],
  ];
  void Promise.allSettled(calls.map(([, p]) => p)).then(() => {
    health.close();
    certs.close();
  });
  return calls;
}

beforeAll(async () => {
  requireCommand('openssl', 'openssl');
  requireCommand('runc', 'runc');
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx turbo run build --filter=@cello/cell-agent)`);
  pki = makePki();
  const port = await freePort();
  addr = (await serve(['--listen', `127.0.0.1:${port}`, '--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.ca, '--allow-client', 'operator'])).address;
}, 60_000);

afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('agent peers', () => {
  it('refuses every RPC from a certificate of its CA that is not the controller, naming what was presented and what is required', async () => {
    for (const [what, id] of Object.entries(pki.impostors)) {
      const c = connectAgent(addr, tlsOf(id));
      try {
        for (const [rpc, p] of everyRpc(c, tlsOf(id))) {
          const st = await p;
          expect(st.code, `${what} ${rpc}: ${st.details}`).toBe(status.PERMISSION_DENIED);
          expect(st.details, `${what} ${rpc}`).toContain('this agent serves only spiffe://cello/client/controller or spiffe://cello/client/operator');
          if (what === 'twoIdentities') expect(st.details).toContain('a certificate with 2 URI SANs');
          else expect(st.details, `${what} ${rpc}`).toContain(`the client certificate names ${id.uri}`);
        }
      } finally {
        c.close();
      }
    }
    // None of it reached the pod manager: the controller sees no pod.
    const c = connectAgent(addr, tlsOf({ cert: pki.clientCert, key: pki.clientKey }));
    try {
      const st = await unary<GetStatusResponse>(c.getStatus.bind(c) as never, GetStatusRequest.fromPartial({}));
      expect(st.status).toBeUndefined();
    } finally {
      c.close();
    }
  }, 120_000);

  it('ConfigureRegistries without a client certificate is refused, and nothing is kept', async () => {
    const c = new CellAgentClient(addr, credentials.createSsl(readFileSync(pki.ca)));
    try {
      const e = (await unary(c.configureRegistries.bind(c) as never, ConfigureRegistriesRequest.fromPartial({ registriesJson: REGISTRIES_JSON })).catch(
        (x: ServiceError) => x,
      )) as ServiceError;
      expect(e?.code, 'a client without a certificate must be refused').toBe(status.UNAVAILABLE);
    } finally {
      c.close();
    }
    // Neither this nor another cell's certificate (the test above) wrote the agent's saved configuration.
    expect(existsSync(join(dirs[0]!, 'registries.json'))).toBe(false);
  });

  it("serves the controller, and an operator identity listed with --allow-client (which may not renew the cell's certificate)", async () => {
    const controller = connectAgent(addr, tlsOf({ cert: pki.clientCert, key: pki.clientKey }));
    const operator = connectAgent(addr, tlsOf(pki.operator));
    try {
      for (const c of [controller, operator]) {
        const info = await unary<{ version: string }>(c.getInfo.bind(c) as never, GetInfoRequest.fromPartial({}));
        expect(info.version).toMatch(/\d+\.\d+/);
      }
      const certs = new CellCertificatesClient(addr, agentCredentials(tlsOf(pki.operator)));
      const e = (await unary(certs.requestRenewal.bind(certs) as never, RequestRenewalRequest.fromPartial({})).catch((x: ServiceError) => x)) as ServiceError;
      certs.close();
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toMatch(/only the controller may renew/);
    } finally {
      controller.close();
      operator.close();
    }
  });

  it('refuses another cell on the stream port even with a ticket the controller was given', async () => {
    const controller = connectAgent(addr, tlsOf({ cert: pki.clientCert, key: pki.clientKey }));
    let ticket: PortForwardTicketResponse;
    try {
      ticket = await unary<PortForwardTicketResponse>(controller.portForwardTicket.bind(controller) as never, PortForwardTicketRequest.fromPartial({ port: 80 }));
    } finally {
      controller.close();
    }
    expect(ticket.streamPort).toBeGreaterThan(0);
    const cell = pki.impostors.otherCell;
    const err = await openStreamConnection({
      host: '127.0.0.1',
      port: ticket.streamPort,
      token: ticket.token,
      tls: { ca: readFileSync(pki.ca), cert: readFileSync(cell.cert), key: readFileSync(cell.key) },
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(StreamRefusedError);
    expect((err as Error).message).toBe(
      'the client certificate names spiffe://cello/cell/other-cell; this agent serves only spiffe://cello/client/controller or spiffe://cello/client/operator',
    );
  });

  it('refuses to serve plaintext (--insecure-dev) on anything but loopback', async () => {
    const port = await freePort();
    for (const args of [
      ['--listen', `0.0.0.0:${port}`],
      ['--listen', `127.0.0.1:${port}`, '--stream-listen', `0.0.0.0:${await freePort()}`],
    ]) {
      const err = await serve([...args, '--insecure-dev']).catch((e: Error) => e);
      expect(err, args.join(' ')).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/(--listen|--stream-listen) 0\.0\.0\.0:\d+: without TLS \(--insecure-dev\) the agent listens only on a loopback address/);
    }
  });

  it('refuses to start with a certificate that names no cell (it could not know its trust domain)', async () => {
    const err = await serve(['--listen', `127.0.0.1:${await freePort()}`, '--tls-cert', pki.rogueCert, '--tls-key', pki.rogueKey, '--tls-ca', pki.ca]).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      /the agent's certificate \(--tls-cert\) must name this cell as spiffe:\/\/<trust domain>\/cell\/<id>; it is a certificate with no URI SAN/,
    );
  });
});
