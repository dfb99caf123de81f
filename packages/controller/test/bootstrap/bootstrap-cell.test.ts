// The controller's half of a bootstrap against the real agent process (`cell-agent serve
// --bootstrap-user-data`): whatever signs the CSR, the controller installs only a certificate
// naming exactly the cell it bootstraps, in its CA's trust domain.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { CellAgentClient, GetInfoRequest, type AgentInfo } from '@cello/proto/cell';
import { freePort, requireCommand } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootstrapCell, BootstrapError } from '../../src/bootstrap/index.js';
import { cellServerIdentityCheck, CertificateAuthority } from '../../src/security/index.js';
import { openStore, type Store } from '../../src/store/index.js';

const CLI = join(dirname(createRequire(import.meta.url).resolve('@cello/cell-agent')), 'cli.js');
const cellId = 'cell-bs';
let dir: string;
let store: Store;
let ca: CertificateAuthority;
let agent: ChildProcess | undefined;
let stdout = '';

function line(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = re.exec(stdout);
      if (!m) return false;
      clearTimeout(t);
      agent!.stdout!.off('data', check);
      resolve(m);
      return true;
    };
    const t = setTimeout(() => {
      agent!.stdout!.off('data', check);
      reject(new Error(`the agent did not print ${re} within ${timeoutMs} ms; stdout: ${stdout}`));
    }, timeoutMs);
    if (!check()) agent!.stdout!.on('data', check);
  });
}

beforeAll(async () => {
  requireCommand('runc', 'runc');
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx turbo run build --filter=@cello/cell-agent)`);
  dir = await mkdtemp(join(tmpdir(), 'cello-bootstrap-cell-'));
  store = await openStore({ kind: 'embedded', dir: join(dir, 'store') });
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: randomBytes(32) });
}, 60_000);

afterAll(async () => {
  agent?.kill('SIGKILL');
  await store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('bootstrapCell', () => {
  it('refuses to install a certificate that does not name exactly this cell, then installs the right one', async () => {
    const token = `cbt_${randomBytes(24).toString('hex')}`;
    const userData = join(dir, 'user-data.json');
    await writeFile(
      userData,
      JSON.stringify({
        cello: 'cell-bootstrap/v1',
        controllerId: 'ctl-bs',
        cellId,
        agentPort: 7443,
        caCertPem: ca.certPem,
        token,
        tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      }),
    );
    const stateDir = join(dir, 'state');
    agent = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--bootstrap-user-data',
        userData,
        '--listen',
        `127.0.0.1:${await freePort()}`,
        '--state-dir',
        stateDir,
        '--run-dir',
        join(dir, 'run'),
        '--cgroup-parent',
        `/cello-test/bs-${process.pid}`,
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, CELLO_LOG_LEVEL: 'error' },
      },
    );
    agent.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
    const address = (await line(/bootstrap listening (\S+)/, 15_000))[1]!;

    // A signer that names the wrong cell (a bug, or a signer that is not this CA): the
    // controller checks what it is about to install, and the cell never receives it.
    const wrongCell = { certPem: ca.certPem, trustDomain: ca.trustDomain, signCsr: (csr: string, req: { cellId: string }) => ca.signCsr(csr, { ...req, cellId: 'cell-other' }) };
    const err = await bootstrapCell({ address, cellId, token, ca: wrongCell, timeoutMs: 20_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BootstrapError);
    expect((err as Error).message).toBe(
      `bootstrap of cell ${cellId}: the signed certificate names spiffe://cello/cell/cell-other, expected exactly spiffe://cello/cell/${cellId}; not installing it`,
    );
    // The trust domain is part of the identity too.
    const otherDomain = { certPem: ca.certPem, trustDomain: 'elsewhere', signCsr: ca.signCsr.bind(ca) };
    const err2 = await bootstrapCell({ address, cellId, token, ca: otherDomain, timeoutMs: 20_000 }).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/names spiffe:\/\/cello\/cell\/cell-bs, expected exactly spiffe:\/\/elsewhere\/cell\/cell-bs; not installing it/);
    expect(existsSync(join(stateDir, 'identity', 'cell.pem'))).toBe(false);

    // The agent repeats its CSR for the same token until a certificate is installed.
    await bootstrapCell({ address, cellId, token, ca, ips: ['127.0.0.1'], timeoutMs: 20_000 });
    const served = (await line(/^listening (\S+)/m, 15_000))[1]!;
    const me = await ca.issueClientCertificate('controller');
    const client = new CellAgentClient(
      served,
      credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(me.keyPem), Buffer.from(me.certPem), { checkServerIdentity: cellServerIdentityCheck(cellId) }),
    );
    try {
      const info = await new Promise<AgentInfo>((resolve, reject) =>
        client.getInfo(GetInfoRequest.fromPartial({}), new Metadata(), { deadline: Date.now() + 10_000 }, (e: ServiceError | null, r: AgentInfo) => (e ? reject(e) : resolve(r))),
      );
      expect(info.cellId).toBe(cellId);
    } finally {
      client.close();
    }
  }, 90_000);
});
