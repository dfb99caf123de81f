// The simulated provider (the scale benchmark's) through the shared CellProvider contract: the
// benchmark measures the controller against it, so it must behave as the real providers do.
import { catalogTypes, localCatalog } from '../../src/catalog/catalog.js';
import { SimulatedProvider } from '../../src/providers/simulated/simulated.js';
import { providerContract } from './contract.js';

// A small cell limit: the contract reaches it to see CapacityError.
providerContract('simulated', async () => ({
  provider: new SimulatedProvider({ types: catalogTypes(localCatalog()), launchMs: 5, maxCells: 3 }),
  controllerId: 'contract-simulated',
  instanceType: 'local.nano',
}));
