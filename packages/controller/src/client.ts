// What a client process of the controller API needs (cellctl's configuration and the API's
// channel credentials), as the subpath `@cello/controller/client`: a client such as cello-cri
// loads this without the daemon, its providers and their SDKs.
export { readConfig as readCellctlConfig, resolveContext as resolveCellctlContext, configPath as cellctlConfigPath, type ResolvedContext } from './cellctl/config.js';
export { apiChannelCredentials, API_CHANNEL_OPTIONS, type ApiClientCredentials } from './api/auth/client.js';
export { ConfigError } from './errors.js';
export { Controller as ControllerApiClient } from './k8s/controller-client.js';
