// Provider, bootstrap and agent together: an instance launched on the EC2 emulator is booted by
// the harness (its user data read back from EC2, the real agent started with it), the
// controller's bootstrapCell has the controller CA sign the agent's CSR, and from then on the
// agent answers only mTLS clients that the same CA vouches for.
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { type AgentInfo, CellAgentClient, CellNoticeKind, GetInfoRequest, WatchStatusRequest, type CellNotice, type WatchStatusEvent } from '@cello/proto/cell';
import { startMoto, waitFor, type MotoServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootstrapCell, BootstrapError } from '../../src/bootstrap/index.js';
import { AgentPool, mtlsAgentCredentials } from '../../src/agents/pool.js';
import { CellCertificateRenewer } from '../../src/agents/cert-renewal.js';
import { AwsProvider, CELL_TAGS } from '../../src/providers/aws/index.js';
import { BootstrapTokens, cellServerIdentityCheck, CertificateAuthority } from '../../src/security/index.js';
import { openStore, type Store } from '../../src/store/index.js';
import { makeWorld, type MotoWorld } from '../providers/aws/moto-world.js';
import { BootHarness } from './boot-harness.js';

const logger = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });
let moto: MotoServer;
let world: MotoWorld;
let store: Store;
let storeDir: string;
let ca: CertificateAuthority;
let tokens: BootstrapTokens;
let provider: AwsProvider;
const harness = new BootHarness();

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  storeDir = await mkdtemp(join(tmpdir(), 'cello-ctl-store-'));
  store = await openStore({ kind: 'embedded', dir: storeDir });
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
  tokens = new BootstrapTokens(store);
  provider = new AwsProvider({
    config: world.config(),
    controllerId: 'ctl-boot',
    clientConfig: { credentials: moto.credentials },
    logger,
    testAgentAddressMap: harness.addressOf,
  });
});

afterAll(async () => {
  // Every step runs even if an earlier one fails: nothing started here may outlive the test.
  const steps: Array<() => unknown> = [
    () => harness.close(),
    () => provider?.close(),
    () => store?.close(),
    () => storeDir && rm(storeDir, { recursive: true, force: true }),
    () => moto?.stop(),
  ];
  for (const step of steps)
    await Promise.resolve()
      .then(step)
      .catch((err: unknown) => console.error(`cleanup: ${(err as Error).message}`));
});

async function launchCell(cellId: string, ttlSeconds = 600) {
  const t = await tokens.issueBootstrapToken(cellId, ttlSeconds);
  const l = await provider.launch({
    cellId,
    instanceType: 't3.small',
    spot: false,
    tags: { [CELL_TAGS.controllerId]: 'ctl-boot', [CELL_TAGS.cellId]: cellId, [CELL_TAGS.pod]: 'default/web' },
    bootstrap: { caCertPem: ca.certPem, token: t.token, tokenExpiresAt: t.expiresAt.toISOString(), controllerId: 'ctl-boot', cellId, agentPort: 7443 },
  });
  return { ...l, token: t.token };
}

function getInfo(client: CellAgentClient): Promise<AgentInfo> {
  return new Promise((resolve, reject) =>
    client.getInfo(GetInfoRequest.fromPartial({}), new Metadata(), { deadline: Date.now() + 10_000 }, (e: ServiceError | null, r: AgentInfo) => (e ? reject(e) : resolve(r))),
  );
}

describe('cell bootstrap on an emulated EC2 instance', () => {
  it('launch -> boot from user data -> token proven -> CSR signed for the cell -> mTLS only', async () => {
    const cellId = 'cell-boot1';
    const l = await launchCell(cellId);
    const inst = await harness.boot(provider, l.instanceId);
    // The controller finds the agent where describe says: the test map, never moto's invented IP.
    const [info] = await provider.describe([l.instanceId]);
    expect(info!.agentAddress).toBe(inst.address);

    const res = await bootstrapCell({ address: info!.agentAddress!, cellId, token: l.token, ca, tokens, ips: ['127.0.0.1'], dnsNames: [l.instanceId], logger });
    expect(res.attempts).toBeGreaterThanOrEqual(1);
    const pem = await readFile(join(inst.stateDir, 'identity', 'cell.pem'), 'utf8');
    expect(pem).toBe(res.certPem);
    // The key was made on the cell and never left it: it is in the cell's state only.
    expect(await readFile(join(inst.stateDir, 'identity', 'cell.key'), 'utf8')).toContain('PRIVATE KEY');
    await waitFor('the agent to serve mTLS', () => /(^|\n)listening /.test(inst.output()), { timeoutMs: 30_000 });

    // A client the CA vouches for reaches the agent, and the agent proves it is this cell.
    const client = await ca.issueClientCertificate('controller');
    const mtls = new CellAgentClient(
      inst.address,
      credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
        checkServerIdentity: cellServerIdentityCheck(cellId),
      }),
    );
    try {
      expect((await getInfo(mtls)).cellId).toBe(cellId);
    } finally {
      mtls.close();
    }
    // A client without a certificate is refused: the agent accepts only mTLS now.
    const anon = new CellAgentClient(inst.address, credentials.createSsl(Buffer.from(ca.certPem), null, null, { checkServerIdentity: () => undefined }));
    try {
      await expect(getInfo(anon)).rejects.toBeTruthy();
    } finally {
      anon.close();
    }
    // Another cell's identity check fails against this agent's certificate.
    const wrong = new CellAgentClient(
      inst.address,
      credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), { checkServerIdentity: cellServerIdentityCheck('cell-other') }),
    );
    try {
      await expect(getInfo(wrong)).rejects.toBeTruthy();
    } finally {
      wrong.close();
    }

    // Rotation works the same on a bootstrapped cell: a fresh key made on the cell, a new
    // certificate in STATE/identity, served to the next handshake, with no agent restart.
    const pool = new AgentPool(mtlsAgentCredentials(() => ({ caPem: ca.certPem, certPem: client.certPem, keyPem: client.keyPem })));
    try {
      const renewer = new CellCertificateRenewer({ ca, client: (id, addr) => pool.certificates(id, addr), ttlSeconds: 3600, log: logger });
      const keyBefore = await readFile(join(inst.stateDir, 'identity', 'cell.key'), 'utf8');
      const notAfter = await renewer.renew(cellId, inst.address);
      const renewed = await readFile(join(inst.stateDir, 'identity', 'cell.pem'), 'utf8');
      expect(renewed).not.toBe(res.certPem);
      expect(Date.parse(new X509Certificate(renewed).validTo)).toBe(notAfter.getTime());
      expect(await readFile(join(inst.stateDir, 'identity', 'cell.key'), 'utf8')).not.toBe(keyBefore);
      let served = '';
      const fresh = new CellAgentClient(
        inst.address,
        credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
          checkServerIdentity: (h, c) => ((served = c.serialNumber), cellServerIdentityCheck(cellId)(h, c)),
        }),
      );
      try {
        expect((await getInfo(fresh)).cellId).toBe(cellId);
      } finally {
        fresh.close();
      }
      expect(served).toBe(new X509Certificate(renewed).serialNumber);
    } finally {
      pool.closeAll();
    }

    // The token is spent: presenting it again is refused before anything is sent.
    const again = await bootstrapCell({ address: inst.address, cellId, token: l.token, ca, tokens, timeoutMs: 3000 }).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(BootstrapError);
    expect((again as Error).message).toMatch(/refused \(unknown\)/);
  });

  it('an agent refuses a controller whose token is wrong or expired', async () => {
    const cellId = 'cell-boot2';
    const l = await launchCell(cellId);
    const inst = await harness.boot(provider, l.instanceId);
    const wrong = await bootstrapCell({ address: inst.address, cellId, token: 'cbt_forged-token-0000000000000000', ca, timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect((wrong as Error).message).toMatch(/does not match/);

    const cellId3 = 'cell-boot3';
    const l3 = await launchCell(cellId3, 1);
    await new Promise((r) => setTimeout(r, 1100));
    const inst3 = await harness.boot(provider, l3.instanceId);
    // The controller's own record refuses it first ...
    const e1 = await bootstrapCell({ address: inst3.address, cellId: cellId3, token: l3.token, ca, tokens, timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect((e1 as Error).message).toMatch(/refused \(expired\)/);
    // ... and so does the agent, on its own, from the user data's expiry.
    const e2 = await bootstrapCell({ address: inst3.address, cellId: cellId3, token: l3.token, ca, timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect((e2 as Error).message).toMatch(/expired at/);
  });

  it('terminate ends the instance; the collector sees nothing left of it', async () => {
    const cellId = 'cell-boot4';
    const l = await launchCell(cellId);
    const inst = await harness.boot(provider, l.instanceId);
    await provider.terminate([l.instanceId]);
    await inst.kill();
    const owned = await provider.listOwned('ctl-boot');
    expect(owned.map((o) => o.instanceId)).not.toContain(l.instanceId);
  });
});

describe('spot interruption notices', () => {
  it('an agent booted from IMDSv2 reports a spot interruption on WatchStatus', async () => {
    const cellId = 'cell-spot1';
    const l = await launchCell(cellId);
    const inst = await harness.boot(provider, l.instanceId, { via: 'imds' });
    await bootstrapCell({ address: inst.address, cellId, token: l.token, ca, tokens, ips: ['127.0.0.1'], logger });
    await waitFor('the agent to serve mTLS', () => /(^|\n)listening /.test(inst.output()), { timeoutMs: 30_000 });
    const client = await ca.issueClientCertificate('controller');
    const mtls = new CellAgentClient(
      inst.address,
      credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), { checkServerIdentity: cellServerIdentityCheck(cellId) }),
    );
    const notices: CellNotice[] = [];
    const stream = mtls.watchStatus(WatchStatusRequest.fromPartial({}));
    stream.on('data', (e: WatchStatusEvent) => {
      if (e.kind?.$case === 'notice') notices.push(e.kind.value);
    });
    stream.on('error', () => undefined);
    try {
      const at = new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z');
      inst.imds!.set('/latest/meta-data/spot/instance-action', JSON.stringify({ action: 'terminate', time: at }));
      // The agent polls metadata every 5 s, as AWS recommends for the two-minute warning.
      await waitFor('the spot notice on WatchStatus', () => notices.length > 0, { timeoutMs: 20_000, intervalMs: 100 });
      expect(notices[0]).toMatchObject({ kind: CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION, action: 'terminate' });
      expect(notices[0]!.actionAt?.toISOString().replace(/\.\d+Z$/, 'Z')).toBe(at);
      // The agent only ever used IMDSv2 sessions.
      expect(inst.imds!.unauthorized).toBe(0);
    } finally {
      stream.cancel();
      mtls.close();
    }
  });
});
