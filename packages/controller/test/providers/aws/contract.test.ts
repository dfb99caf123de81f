// The shared CellProvider contract (test/providers/contract.ts) for the aws provider, on a real
// EC2 API emulator (moto server on loopback). Moto does not emulate capacity shortages: the
// contract's is EC2's own InsufficientInstanceCapacity response, injected (fault-injection.ts).
import { startMoto } from '@cello/testkit';
import { pino } from 'pino';
import { AwsProvider } from '../../../src/providers/aws/index.js';
import { providerContract } from '../contract.js';
import { injectEc2Faults } from './fault-injection.js';
import { makeWorld } from './moto-world.js';

providerContract('aws (moto)', async () => {
  const moto = await startMoto();
  const world = await makeWorld(moto);
  const provider = new AwsProvider({
    config: world.config({ instanceTypes: ['t3.*'] }),
    controllerId: 'contract-aws',
    clientConfig: { credentials: moto.credentials },
    logger: pino({ level: process.env['LOG_LEVEL'] ?? 'silent' }),
  });
  return {
    provider,
    controllerId: 'contract-aws',
    instanceType: 't3.small',
    // No capacity for the type in any zone, until undone.
    exhaustCapacity: async (instanceType) => {
      injectEc2Faults(provider.ec2, [{ command: 'RunInstances', when: (i) => i['InstanceType'] === instanceType, code: 'InsufficientInstanceCapacity' }]);
      return async () => void provider.ec2.middlewareStack.remove('testFaultInjection');
    },
    cleanup: () => moto.stop(),
  };
});
