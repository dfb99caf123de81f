// The contract every CellProvider passes: one suite, called by each provider's own test with a
// factory for a real instance of it (local processes; EC2 against moto). It checks what the
// controller core relies on: a catalog with prices, launch with tags, batched describe,
// listOwned by controller ID (what garbage collection after a store wipe depends on),
// terminate that makes an instance disappear or report terminated, capacity() (what sizes the
// virtual node) counting the provider's own launches, and CapacityError for a launch that cannot
// get capacity (what the reconciler's fallback to the next candidate type tests for).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CapacityError, type CellProvider, type InstanceInfo, type LaunchRequest, type ProviderCapacity } from '../../src/providers/provider.js';

export interface ContractSetup {
  provider: CellProvider;
  controllerId: string;
  /** An instance type of this provider to launch. */
  instanceType: string;
  /** How long an instance may take to report running (moto: at once; local: the agent's start). */
  runningTimeoutMs?: number;
  /**
   * Makes launches of instanceType fail for want of capacity, the way this provider meets a real
   * shortage that it cannot reach on its own here (moto does not emulate EC2's
   * InsufficientInstanceCapacity); returns what undoes it. Absent: the suite launches cells up to
   * the limit capacity() reports, so the factory gives the provider a small one (maxCells).
   */
  exhaustCapacity?: (instanceType: string) => Promise<() => Promise<void>>;
  cleanup?: () => Promise<void>;
}

/** Most cells the suite launches to reach a provider's limit: beyond, the factory must set a smaller one. */
const MAX_FILL = 4;

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
      // A fixed catalogue refuses the caller's mistake; a cloud answers that the type is not
      // offered where it looks, as capacity, so that the lifecycle falls back to another type.
      const err = await s.provider.launch(req({ instanceType: 'no-such.type' })).catch((e: unknown) => e);
      if (err instanceof CapacityError) expect(err.instanceType).toBe('no-such.type');
      else expect(err).toMatchObject({ code: 'InvalidArgument', instanceType: 'no-such.type' });
    });

    const capacity = async (): Promise<ProviderCapacity> => {
      expect(s.provider.capacity, `${s.provider.name} reports no capacity()`).toBeTypeOf('function');
      return s.provider.capacity!();
    };

    it('reports its capacity, and counts its own launches against it until they end', async () => {
      const before = await capacity();
      // The virtual node turns these into its capacity and allocatable figures: whole, finite, non-negative.
      const counts = (x: { limit: number; used: number } | undefined) => {
        if (!x) return;
        expect(Number.isSafeInteger(x.limit) && x.limit >= 0, `limit ${x.limit}`).toBe(true);
        expect(Number.isSafeInteger(x.used) && x.used >= 0, `used ${x.used}`).toBe(true);
      };
      counts(before.instances);
      expect(before.instances.limit).toBeGreaterThan(0);
      counts(before.vcpus);
      counts(before.memoryMiB);
      if (before.sharedCpus !== undefined) expect(before.sharedCpus).toBeGreaterThan(0);
      expect(before.source).toMatch(/\S/);

      const r = req();
      const inst = await s.provider.launch(r);
      launched.push(inst.instanceId);
      const during = await capacity();
      expect(during.instances.limit).toBe(before.instances.limit);
      expect(during.instances.used).toBe(before.instances.used + 1);
      await s.provider.terminate([inst.instanceId]);
      expect((await capacity()).instances.used).toBe(before.instances.used);
    }, 120_000);

    // Last: a shortage may be remembered (aws keeps a type+zone that said no aside for a while).
    it('throws CapacityError when a launch cannot get capacity, and leaves no instance for the cell', async () => {
      const undo = await (s.exhaustCapacity ?? fillToLimit)(s.instanceType);
      try {
        const r = req();
        const err = await s.provider.launch(r).then(
          (i) => {
            launched.push(i.instanceId);
            return undefined;
          },
          (e: unknown) => e,
        );
        // The reconciler tries the next candidate type only on this class; any other error fails the cell.
        expect(err).toBeInstanceOf(CapacityError);
        expect((err as CapacityError).instanceType).toBe(s.instanceType);
        // The next candidate is launched for the same cell: nothing of this attempt may be left running.
        const owned = await s.provider.listOwned(s.controllerId);
        expect(owned.filter((o) => o.tags[TAG_CELL] === r.cellId && !gone(o))).toEqual([]);
      } finally {
        await undo();
      }
    }, 120_000);

    /** Launches cells until capacity() says the provider is full; returns what terminates them. */
    async function fillToLimit(): Promise<() => Promise<void>> {
      const { instances } = await capacity();
      const room = instances.limit - instances.used;
      expect(room, `the provider has room for ${room} more cells: give the factory a cell limit of at most ${MAX_FILL}, or an exhaustCapacity hook`).toBeLessThanOrEqual(MAX_FILL);
      const ids: string[] = [];
      // One at a time: a provider checks its limit when it launches.
      for (let i = 0; i < room; i++) {
        const inst = await s.provider.launch(req());
        launched.push(inst.instanceId);
        ids.push(inst.instanceId);
      }
      expect((await capacity()).instances.used).toBe(instances.limit);
      return () => s.provider.terminate(ids);
    }
  });
}
