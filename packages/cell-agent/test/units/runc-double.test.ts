// The stream tests' runc double (test/streams/helpers/runc-units.ts) against the UnitDirectory
// contract, so what the stream tests rely on is what the agent's pod manager does.
import { RuncTestUnits } from '../streams/helpers/runc-units.js';
import { unitDirectoryContract, type UnitDirectoryUnderTest } from './contract.js';

unitDirectoryContract('runc test double', async (): Promise<UnitDirectoryUnderTest> => {
  const units = new RuncTestUnits();
  return {
    directory: units,
    start: async (specs) => {
      for (const s of specs) {
        units.add({
          name: s.name,
          args: ['sh', '-c', s.script],
          stdin: s.stdin ?? false,
          tty: s.tty ?? false,
          ...(s.memoryLimitBytes !== undefined ? { memoryLimitBytes: s.memoryLimitBytes } : {}),
        });
      }
      await Promise.all(specs.map((s) => units.get(s.name)!.start()));
    },
    restart: async (name) => {
      const u = units.get(name)!;
      await u.stop();
      await u.start();
    },
    cleanup: () => units.cleanup(),
  };
});
