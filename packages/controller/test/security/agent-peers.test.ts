// One cell may not drive another: two real local cells (the local provider, real agent
// processes, certificates from the controller's real CA written into each cell's directory).
// Cell A's key — which sits on cell A, and for a local cell in a directory on this machine —
// is presented to cell B's agent for ApplyPod, Exec, PortForward, PortForwardTicket and the
// stream port, and refused; the controller's own certificate is served.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import {
  ApplyPodRequest,
  CellAgentClient,
  GetInfoRequest,
  GetStatusRequest,
  Pod,
  type GetStatusResponse,
  PortForwardTicketRequest,
  type AgentInfo,
  type PortForwardTicketResponse,
} from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callUnary } from '../../src/agents/pool.js';
import { LocalProvider } from '../../src/providers/local/local.js';
import { cellServerIdentityCheck, CertificateAuthority, type IssuedCertificate } from '../../src/security/index.js';
import { openStore, type Store } from '../../src/store/index.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-agent-peers-'));
let store: Store;
let ca: CertificateAuthority;
let provider: LocalProvider;
let controller: IssuedCertificate;
const cells = { a: 'cell-peer-a', b: 'cell-peer-b' };
const instances: string[] = [];
const addresses: Record<string, string> = {};

function creds(cellId: string, who: { certPem: string; keyPem: string }): ChannelCredentials {
  return credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(who.keyPem), Buffer.from(who.certPem), { checkServerIdentity: cellServerIdentityCheck(cellId) });
}

function client(cellId: string, who: { certPem: string; keyPem: string }): CellAgentClient {
  return new CellAgentClient(addresses[cellId]!, creds(cellId, who), { 'grpc.ssl_target_name_override': cellId, 'grpc.default_authority': cellId });
}

/** Cell A's key and certificate, as they lie in its directory. */
function cellAFiles(): { certPem: string; keyPem: string } {
  return { certPem: readFileSync(join(dir, 'cells', cells.a, 'tls', 'cell.crt'), 'utf8'), keyPem: readFileSync(join(dir, 'cells', cells.a, 'tls', 'cell.key'), 'utf8') };
}

beforeAll(async () => {
  store = await openStore({ kind: 'embedded', dir: join(dir, 'store') });
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
  controller = await ca.issueClientCertificate('controller');
  provider = new LocalProvider({
    root: join(dir, 'cells'),
    network: 'host',
    issueCertificate: async (cellId, sans) => ({ ...(await ca.issueCellCertificate({ cellId, ips: sans.filter((s) => /^\d/.test(s)), ttlSeconds: 3600 })), caPem: ca.certPem }),
  });
  for (const cellId of Object.values(cells)) {
    const inst = await provider.launch({
      cellId,
      instanceType: 'local.nano',
      spot: false,
      tags: { 'cello.io/controller-id': 'peers', 'cello.io/cell-id': cellId },
      bootstrap: { caCertPem: ca.certPem, token: 't', tokenExpiresAt: new Date().toISOString(), controllerId: 'peers', cellId, agentPort: 0 },
    });
    instances.push(inst.instanceId);
    addresses[cellId] = (await provider.describe([inst.instanceId]))[0]!.agentAddress!;
    const c = client(cellId, controller);
    try {
      await waitFor(`${cellId}'s agent`, () => callUnary<AgentInfo>(c, 'getInfo', GetInfoRequest.fromPartial({}), 1000).catch(() => undefined), {
        timeoutMs: 30_000,
        intervalMs: 100,
      });
    } finally {
      c.close();
    }
  }
}, 90_000);

afterAll(async () => {
  if (provider) await provider.terminate(instances);
  await store?.close();
  rmSync(dir, { recursive: true, force: true });
});

function failure(p: Promise<unknown>): Promise<ServiceError | undefined> {
  return p.then(
    () => undefined,
    (e: ServiceError) => e,
  );
}

function streamFailure(call: { on(ev: 'error', f: (e: ServiceError) => void): unknown; cancel(): void }): Promise<ServiceError> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      call.cancel();
      reject(new Error('no error within 10 s'));
    }, 10_000);
    call.on('error', (e) => {
      clearTimeout(t);
      resolve(e);
    });
  });
}

describe("another cell's certificate", () => {
  it("is refused by cell B's agent for ApplyPod, Exec, PortForward and PortForwardTicket", async () => {
    const c = client(cells.b, cellAFiles());
    try {
      const pod = Pod.fromPartial({ metadata: { name: 'hijack', namespace: 'default', uid: 'u' }, spec: { containers: [{ name: 'c', image: 'busybox', command: ['sh'] }] } });
      const errors = {
        ApplyPod: await failure(
          new Promise((res, rej) =>
            c.applyPod(ApplyPodRequest.fromPartial({ pod, generation: 1 }), new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? rej(e) : res(r))),
          ),
        ),
        PortForwardTicket: await failure(callUnary<PortForwardTicketResponse>(c, 'portForwardTicket', PortForwardTicketRequest.fromPartial({ port: 80 }), 10_000)),
        Exec: await streamFailure(c.exec()),
        PortForward: await streamFailure(c.portForward()),
      };
      for (const [rpc, e] of Object.entries(errors)) {
        // Refused in the TLS handshake (a cell certificate has no client-auth usage) or, for a
        // certificate issued before that, by the agent (it serves only the controller).
        expect(e, rpc).toBeDefined();
        expect([status.UNAVAILABLE, status.INTERNAL, status.PERMISSION_DENIED], `${rpc}: ${e!.code} ${e!.details}`).toContain(e!.code);
      }
    } finally {
      c.close();
    }
  });

  it("is refused on cell B's stream port, even with a ticket the controller got", async () => {
    const c = client(cells.b, controller);
    let ticket: PortForwardTicketResponse;
    try {
      ticket = await callUnary<PortForwardTicketResponse>(c, 'portForwardTicket', PortForwardTicketRequest.fromPartial({ port: 80 }), 10_000);
    } finally {
      c.close();
    }
    const a = cellAFiles();
    const outcome = await new Promise<string>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port: ticket.streamPort, ca: ca.certPem, cert: a.certPem, key: a.keyPem, checkServerIdentity: () => undefined });
      let answer = '';
      s.on('secureConnect', () => s.write(ticket.token));
      s.on('data', (b: Buffer) => (answer += b.toString()));
      s.on('error', (e) => resolve(`error ${e.message}`));
      s.on('close', () => resolve(answer === '' ? 'closed without an answer' : answer));
      setTimeout(() => s.destroy(), 10_000).unref();
    });
    // Refused before the ticket is looked at: by TLS, or by the agent's peer check; never
    // admitted (an admitted ticket for a port nothing listens on answers "cannot connect").
    expect(outcome).not.toMatch(/^ok|cannot connect/);
    expect(outcome).toMatch(/^error |^closed without an answer$|^error: the client certificate names spiffe:\/\/cello\/cell\/cell-peer-a/);
  });

  it('the controller is served by both cells, and cell B holds no pod', async () => {
    for (const cellId of Object.values(cells)) {
      const c = client(cellId, controller);
      try {
        expect((await callUnary<AgentInfo>(c, 'getInfo', GetInfoRequest.fromPartial({}), 10_000)).cellId).toBe(cellId);
        expect((await callUnary<GetStatusResponse>(c, 'getStatus', GetStatusRequest.fromPartial({}), 10_000)).status).toBeUndefined();
      } finally {
        c.close();
      }
    }
  });
});
