// The aws cell provider: EC2 instances as cells. See docs/aws.md.
export { AwsProvider, awsProviderFromConfig, AGENT_PORT_TAG, clientToken, type AwsProviderOptions } from './provider.js';
export {
  awsProviderConfigSchema,
  parseAwsProviderConfig,
  ANNOTATIONS as AWS_ANNOTATIONS,
  TAGS as CELL_TAGS,
  type AwsProviderConfig,
  type AwsProviderConfigInput,
} from './config.js';
export { encodeUserData, decodeUserData, USER_DATA_FORMAT, USER_DATA_MAX_BYTES } from './user-data.js';
export { collectOrphans, type CollectOptions, type CollectResult } from './gc.js';
export { loadPrices, loadSpecSnapshot, priceSpecs, specFromDescription, describeAllTypes } from './catalog.js';
