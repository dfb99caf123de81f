// The shared CellProvider contract (test/providers/contract.ts) for the gce provider, against the
// GCE fake of @cello/testkit (no Compute Engine emulator exists). The capacity shortage is the
// fake's: inserts of the type fail in their operation with ZONE_RESOURCE_POOL_EXHAUSTED.
import { startGceFake } from '@cello/testkit';
import { pino } from 'pino';
import { GceProvider, parseGceProviderConfig } from '../../../src/providers/gce/index.js';
import { providerContract } from '../contract.js';

providerContract('gce (fake)', async () => {
  const gce = await startGceFake();
  const provider = new GceProvider({
    config: parseGceProviderConfig({
      project: gce.project,
      zones: gce.zones,
      endpoint: gce.endpoint,
      image: { amd64: `projects/${gce.project}/global/images/cello-cell` },
      machineTypes: ['e2-*'],
      firewall: { allowFromCidrs: ['10.0.0.0/8'] },
      operationTimeoutSeconds: 20,
    }),
    controllerId: 'contract-gce',
    clientOptions: { authClient: gce.authClient as never },
    logger: pino({ level: process.env['LOG_LEVEL'] ?? 'silent' }),
  });
  return {
    provider,
    controllerId: 'contract-gce',
    instanceType: 'e2-small',
    exhaustCapacity: async (machineType) => {
      const undo = gce.failInserts({ code: 'ZONE_RESOURCE_POOL_EXHAUSTED', machineType });
      return async () => undo();
    },
    cleanup: () => gce.stop(),
  };
});
