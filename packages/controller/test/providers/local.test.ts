// The local provider: each cell a real `cell-agent serve` process with its own state dir,
// port, agent identity and (as root) network namespace on the cello0 bridge.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { credentials } from '@grpc/grpc-js';
import { CellAgentClient, GetInfoRequest, type AgentInfo } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { LocalProvider } from '../../src/providers/local/local.js';
import { callUnary } from '../../src/agents/pool.js';
import { providerContract } from './contract.js';

const dirs: string[] = [];
function root(): string {
  const d = mkdtempSync(join(tmpdir(), 'cello-local-provider-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// A cell limit of 2 (the contract launches two at once): the contract fills it to see CapacityError.
providerContract('local', async () => ({ provider: new LocalProvider({ root: root(), maxCells: 2 }), controllerId: 'contract-local', instanceType: 'local.nano' }));

describe('local provider', () => {
  it('runs a real agent per cell, in its own network namespace, and leaves nothing when terminated', async () => {
    const r = root();
    const p = new LocalProvider({ root: r });
    const cellId = 'cell-localtest01';
    const inst = await p.launch({
      cellId,
      instanceType: 'local.nano',
      spot: false,
      tags: { 'cello.io/controller-id': 'lt', 'cello.io/cell-id': cellId },
      bootstrap: { caCertPem: '', token: 't', tokenExpiresAt: new Date().toISOString(), controllerId: 'lt', cellId, agentPort: 0 },
    });
    try {
      const [info] = await p.describe([inst.instanceId]);
      expect(info!.agentAddress).toMatch(/^127\.0\.0\.1:\d+$/);
      const client = new CellAgentClient(info!.agentAddress!, credentials.createInsecure());
      const agent = await waitFor('agent answers', () => callUnary<AgentInfo>(client, 'getInfo', GetInfoRequest.fromPartial({}), 1000).catch(() => undefined), {
        timeoutMs: 30_000,
        intervalMs: 100,
      });
      expect(agent.cellId).toBe(cellId);
      client.close();
      // Per-boot files under /run, never the world-writable /dev/shm.
      expect(statSync(join('/run/cello/local', cellId)).mode & 0o777).toBe(0o700);
      const f = JSON.parse(readFileSync(join(r, cellId, 'instance.json'), 'utf8')) as { net?: { netns: string; address: string } };
      expect(f.net?.address).toMatch(/^10\.88\./);
      expect(existsSync(`/run/netns/${f.net!.netns}`)).toBe(true);
      await p.terminate([inst.instanceId]);
      expect(existsSync(join(r, cellId))).toBe(false);
      expect(existsSync(join('/run/cello/local', cellId))).toBe(false);
      expect(existsSync(`/run/netns/${f.net!.netns}`)).toBe(false);
    } finally {
      await p.terminate([inst.instanceId]);
    }
  }, 60_000);

  it('gives every cell on this machine its own address, even across controllers launching at once', async () => {
    // Two providers with separate roots stand for two controllers (a test and `npm start`).
    const a = new LocalProvider({ root: root() });
    const b = new LocalProvider({ root: root() });
    const launch = (p: LocalProvider, cellId: string) =>
      p
        .launch({
          cellId,
          instanceType: 'local.nano',
          spot: false,
          tags: { 'cello.io/controller-id': 'ipam', 'cello.io/cell-id': cellId },
          bootstrap: { caCertPem: '', token: 't', tokenExpiresAt: new Date().toISOString(), controllerId: 'ipam', cellId, agentPort: 0 },
        })
        .then((inst) => ({ p, inst, cellId }));
    const cells = await Promise.all([launch(a, 'cell-ipam-a1'), launch(b, 'cell-ipam-b1'), launch(a, 'cell-ipam-a2'), launch(b, 'cell-ipam-b2')]);
    try {
      const addrs = cells.map(({ p, cellId }) => {
        const f = JSON.parse(readFileSync(join((p as unknown as { opts: { root: string } }).opts.root, cellId, 'instance.json'), 'utf8')) as {
          net: { address: string; netns: string };
        };
        const inNs = execFileSync('ip', ['-n', f.net.netns, '-4', '-o', 'addr', 'show', 'dev', 'eth0'], { encoding: 'utf8' });
        expect(inNs).toContain(`${f.net.address}/16`);
        return f.net.address;
      });
      expect(new Set(addrs).size).toBe(4);
    } finally {
      await Promise.all(cells.map(({ p, inst }) => p.terminate([inst.instanceId])));
    }
    for (const { cellId } of cells) expect(existsSync(join('/run/cello/local', cellId))).toBe(false);
  }, 90_000);
});
