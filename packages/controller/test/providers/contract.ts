// The contract every CellProvider passes: one suite, called by each provider's own test with a
// factory for a real instance of it (local processes; EC2 against moto). It checks what the
// controller core relies on: a catalog with prices, launch with tags, batched describe,
// listOwned by controller ID (what garbage collection after a store wipe depends on), and
// terminate that makes an instance disappear or report terminated.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CellProvider, InstanceInfo, LaunchRequest } from '../../src/providers/provider.js';

export interface ContractSetup {
  provider: CellProvider;
  controllerId: string;
  /** An instance type of this provider to launch. */
  instanceType: string;
  /** How long an instance may take to report running (moto: at once; local: the agent's start). */
  runningTimeoutMs?: number;
  cleanup?: () => Promise<void>;
}

const TAG_CONTROLLER = 'cello.io/controller-id';
const TAG_CELL = 'cello.io/cell-id';
const TAG_POD = 'cello.io/pod';

function gone(i: InstanceInfo | undefined): boolean {
  return i === undefined || i.state === 'terminated' || i.state === 'shutting-down';
}

export function providerContract(name: string, setup: () => Promise<ContractSetup>): void {
  describe(`CellProvider contract: ${name}`, () => {
    let s: ContractSetup;
    let seq = 0;
    const launched: string[] = [];
    const req = (over: Partial<LaunchRequest> = {}): LaunchRequest => {
      const cellId = `cell-contract${process.pid}x${++seq}`;
      return {
        cellId,
        instanceType: s.instanceType,
        spot: false,
        tags: { [TAG_CONTROLLER]: s.controllerId, [TAG_CELL]: cellId, [TAG_POD]: `default/contract-${seq}` },
        bootstrap: {
          caCertPem: '-----BEGIN CERTIFICATE-----\nMIIBcontract\n-----END CERTIFICATE-----\n',
          token: `token-${cellId}`,
          tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
          controllerId: s.controllerId,
          cellId,
          agentPort: 9443,
        },
        ...over,
      };
    };

    beforeAll(async () => {
      s = await setup();
    }, 120_000);
    afterAll(async () => {
      // Everything this suite launched carries its controller ID, even launches whose promise failed.
      const owned = s ? await s.provider.listOwned(s.controllerId).catch(() => []) : [];
      const ids = [...new Set([...launched, ...owned.map((o) => o.instanceId)])];
      if (ids.length) await s.provider.terminate(ids).catch(() => undefined);
      await s?.provider.close();
      await s?.cleanup?.();
    }, 120_000);

    it('offers a catalog of instance types with specs and prices', async () => {
      const types = await s.provider.instanceTypes();
      expect(types.length).toBeGreaterThan(0);
      for (const t of types) {
        expect(t.name).toMatch(/\S/);
        expect(t.vcpus).toBeGreaterThan(0);
        expect(t.memoryMiB).toBeGreaterThan(0);
        expect(t.onDemandHourlyUsd).toBeGreaterThanOrEqual(0);
        expect(['amd64', 'arm64']).toContain(t.arch);
      }
      expect(types.map((t) => t.name)).toContain(s.instanceType);
    });

    it('launches with tags, describes in a batch, lists by controller ID, and terminates', async () => {
      const a = req();
      const b = req();
      const [ia, ib] = await Promise.all([s.provider.launch(a), s.provider.launch(b)]);
      launched.push(ia.instanceId, ib.instanceId);
      expect(ia.instanceId).not.toBe(ib.instanceId);

      const described = await s.provider.describe([ia.instanceId, ib.instanceId, 'i-doesnotexist0000']);
      expect(described.map((d) => d.instanceId).sort()).toEqual([ia.instanceId, ib.instanceId].sort());
      const da = described.find((d) => d.instanceId === ia.instanceId)!;
      expect(da.instanceType).toBe(s.instanceType);
      expect(da.tags[TAG_CONTROLLER]).toBe(s.controllerId);
      expect(da.tags[TAG_CELL]).toBe(a.cellId);
      expect(da.tags[TAG_POD]).toBe(a.tags[TAG_POD]);
      expect(['pending', 'running']).toContain(da.state);

      const owned = await s.provider.listOwned(s.controllerId);
      expect(owned.map((o) => o.instanceId)).toEqual(expect.arrayContaining([ia.instanceId, ib.instanceId]));
      const others = await s.provider.listOwned(`${s.controllerId}-other`);
      expect(others.map((o) => o.instanceId)).not.toContain(ia.instanceId);

      await s.provider.terminate([ia.instanceId]);
      const after = await s.provider.describe([ia.instanceId, ib.instanceId]);
      expect(gone(after.find((d) => d.instanceId === ia.instanceId))).toBe(true);
      expect(gone(after.find((d) => d.instanceId === ib.instanceId))).toBe(false);
      const ownedAfter = await s.provider.listOwned(s.controllerId);
      expect(gone(ownedAfter.find((o) => o.instanceId === ia.instanceId))).toBe(true);

      await s.provider.terminate([ib.instanceId]);
      // Terminating what is already gone is not an error (the collector may race the reconciler).
      await s.provider.terminate([ia.instanceId, ib.instanceId]);
      expect(gone((await s.provider.describe([ib.instanceId]))[0])).toBe(true);
    }, 120_000);

    it('refuses an instance type it does not offer', async () => {
      await expect(s.provider.launch(req({ instanceType: 'no-such.type' }))).rejects.toThrow(/no-such\.type/);
    });
  });
}
