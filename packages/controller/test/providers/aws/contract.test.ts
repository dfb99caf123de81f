// The shared CellProvider contract (test/providers/contract.ts) for the aws provider, on a real
// EC2 API emulator (moto server on loopback).
import { startMoto } from '@cello/testkit';
import { pino } from 'pino';
import { AwsProvider } from '../../../src/providers/aws/index.js';
import { providerContract } from '../contract.js';
import { makeWorld } from './moto-world.js';

providerContract('aws (moto)', async () => {
  const moto = await startMoto();
  const world = await makeWorld(moto);
  return {
    provider: new AwsProvider({
      config: world.config({ instanceTypes: ['t3.*'] }),
      controllerId: 'contract-aws',
      clientConfig: { credentials: moto.credentials },
      logger: pino({ level: process.env['LOG_LEVEL'] ?? 'silent' }),
    }),
    controllerId: 'contract-aws',
    instanceType: 't3.small',
    cleanup: () => moto.stop(),
  };
});
