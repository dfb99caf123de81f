// The gce cell provider: Compute Engine VMs as cells. See docs/gce.md.
export { GceProvider, gceProviderFromConfig, instanceName, labelValue, requestId, type GceProviderOptions } from './provider.js';
export {
  gceProviderConfigSchema,
  parseGceProviderConfig,
  regionOf,
  ANNOTATIONS as GCE_ANNOTATIONS,
  LABELS as GCE_LABELS,
  METADATA_KEYS as GCE_METADATA_KEYS,
  type GceProviderConfig,
  type GceProviderConfigInput,
} from './config.js';
export { GceCatalog, listMachineTypes, loadGcePrices, loadGceSpecSnapshot, specFromMachineType } from './catalog.js';
export { firewallName } from './firewall.js';
