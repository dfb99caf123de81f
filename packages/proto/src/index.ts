// @cello/proto: the gRPC contracts and the helpers every package uses with them.
// Messages and services live under the subpaths '@cello/proto/cell', '@cello/proto/controller'
// and '@cello/proto/health'; this entry holds the hand-written helpers.
export { HealthService } from './health-service.js';
export {
  ManifestError,
  podFromManifest,
  parseDockerConfigSecret,
  isDockerConfigType,
  DOCKER_CONFIG_JSON_TYPE,
  DOCKER_CFG_TYPE,
  type DockerAuthEntry,
  readManifests,
  type ManifestObject,
  type PodManifest,
  kubePod,
  kubePodSpec,
} from './manifest/index.js';
export { parseQuantity, parseCpuMillis, parseBytes, parseCount, formatCpuMillis, formatBytes, QuantityError } from './quantity.js';
export { splitHostPort, joinHostPort, freePort, HostPortError } from './net.js';
export { REDACT_PATHS, REDACT_CENSOR } from './redact.js';
export { LineRing } from './line-ring.js';
export { logProcessWarnings, type WarningLog } from './process-warnings.js';
export { CelloError, type ErrorCode, grpcStatus, grpcCodeName, toStatus, errMsg } from './errors.js';
export { LINUX_STOP_SIGNALS } from './signals.js';
export { parseSpiffeId, isSpiffeName, type SpiffeId, type SpiffeKind } from './spiffe.js';
