// @cello/controller: the control plane. The daemon and cellctl are the bins; this surface is
// for embedding (tests, benchmarks, the Kubernetes virtual node).
export { startController, providerFromConfig, type ControllerHandle, type StartOptions } from './daemon.js';
export { parseConfig, loadConfig, configSchema, ConfigError, type Config } from './config.js';
export { Reconciler, TAG_CELL, TAG_CONTROLLER, TAG_POD, type ReconcilerOptions, type WarmPoolEntry, type BootstrapFn } from './reconcile/reconciler.js';
export { AgentPool, insecureAgentCredentials, mtlsAgentCredentials, type AgentCredentials } from './agents/pool.js';
export { ControllerApi } from './api/server.js';
export { ApiAuth, apiChannelCredentials, MASTERS_GROUP, isLoopbackListen, type ApiClientCredentials, type PolicyRule, type Principal } from './api/auth/index.js';
export { readConfig as readCellctlConfig, resolveContext as resolveCellctlContext, upsertCredentials } from './cellctl/config.js';
export { LocalProvider, type LocalProviderOptions } from './providers/local/local.js';
export { SimulatedProvider } from './providers/simulated/simulated.js';
export * from './providers/provider.js';
export { selectCandidates, podDemand, SelectionError, type Candidate, type Demand } from './selection/selection.js';
export { loadCatalog, localCatalog, parseCatalog, type Catalog } from './catalog/catalog.js';
export { CellState, canTransition, stateName, DEFAULT_TIMEOUTS, type Timeouts } from './cells/state.js';
export { createLogger, silentLogger } from './obs/logger.js';
export { Metrics } from './obs/metrics.js';
export { buildProgram as buildCellctl, DEFAULT_SERVER, SERVER_ENV } from './cellctl/commands.js';
export * from './store/index.js';
export * from './security/index.js';
export { bootstrapCell, bootstrapFnFor, BootstrapError, type BootstrapCellOptions, type BootstrapResult } from './bootstrap/index.js';
export { encodeUserData } from './providers/aws/user-data.js';
