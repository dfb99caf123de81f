// A local cell's agent gets an allow-listed environment, not the controller's: the controller's
// environment carries the CA's sealing key (security.encryptionKeyEnv), cloud credentials and
// the like, which an agent — and through it runc and the units' shells — must never hold.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { CellAgentClient, GetInfoRequest, type AgentInfo } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { callUnary } from '../../src/agents/pool.js';
import { LocalProvider } from '../../src/providers/local/local.js';

const dir = mkdtempSync(join(tmpdir(), 'cello-local-env-'));
const secrets = { CELLO_CA_KEY: `k-${process.pid}-sealing-key`, AWS_SECRET_ACCESS_KEY: `aws-${process.pid}-secret`, NODE_OPTIONS: '--max-old-space-size=4099' };
const saved = Object.fromEntries([...Object.keys(secrets), 'CELLO_LOG_LEVEL'].map((k) => [k, process.env[k]]));
afterAll(() => {
  for (const [k, v] of Object.entries(saved))
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  rmSync(dir, { recursive: true, force: true });
});

describe('local provider environment', () => {
  it("does not hand the controller's environment (its keys and credentials) to an agent", async () => {
    Object.assign(process.env, secrets, { CELLO_LOG_LEVEL: 'warn' });
    const p = new LocalProvider({ root: dir, network: 'host' });
    const cellId = 'cell-env01';
    const inst = await p.launch({
      cellId,
      instanceType: 'local.nano',
      spot: false,
      tags: { 'cello.io/controller-id': 'env', 'cello.io/cell-id': cellId },
      bootstrap: { caCertPem: '', token: 't', tokenExpiresAt: new Date().toISOString(), controllerId: 'env', cellId, agentPort: 0 },
    });
    try {
      const [info] = await p.describe([inst.instanceId]);
      const client = new CellAgentClient(info!.agentAddress!, credentials.createInsecure());
      try {
        await waitFor('agent answers', () => callUnary<AgentInfo>(client, 'getInfo', GetInfoRequest.fromPartial({}), 1000).catch(() => undefined), {
          timeoutMs: 30_000,
          intervalMs: 100,
        });
      } finally {
        client.close();
      }
      const { pid } = JSON.parse(readFileSync(join(dir, cellId, 'instance.json'), 'utf8')) as { pid: number };
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);
      const names = environ.map((e) => e.slice(0, e.indexOf('=')));
      for (const [k, v] of Object.entries(secrets)) {
        expect(names, k).not.toContain(k);
        expect(environ.join('\n'), k).not.toContain(v);
      }
      expect(environ).toContain(`CELLO_CELL_ID=${cellId}`);
      expect(environ).toContain('CELLO_LOG_LEVEL=warn');
      expect(environ).toContain(`PATH=${process.env['PATH']}`);
      expect(
        names.every((n) => ['PATH', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TMPDIR', 'CELLO_LOG_LEVEL', 'CELLO_PULL_CHUNK', 'CELLO_CELL_ID'].includes(n)),
        names.join(' '),
      ).toBe(true);
    } finally {
      await p.terminate([inst.instanceId]);
    }
  }, 60_000);
});
