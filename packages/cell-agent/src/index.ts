// @cello/cell-agent: the agent on every cell. The public surface is small: start an agent,
// connect to one, and the seams other modules build on.
export { startAgent, AGENT_VERSION, type Agent, type AgentOptions, type TlsFiles } from './agent.js';
export { connectAgent, agentCredentials, type ClientTls } from './ctl/client.js';
export { createLogger } from './log.js';
export { unpackLogChunk } from './logs/index.js';
export type { ImageService, ImageInfo, ImageConfig } from './images/image-service.js';
export { DirImageService } from './images/dir-images.js';
export type { CgroupDriver, CgroupStats, UnitLimits } from './cgroups/index.js';
export { CgroupV1Driver, CgroupV2Driver, hostCgroupDriver, detectCgroupMode } from './cgroups/index.js';
export type { UnitDirectory, UnitView, LogSink, UnitStdio, RuncTarget, StdStream } from './units/unit-view.js';
export { KUBERNETES_BACKOFF, type BackoffPolicy } from './pod/backoff.js';
