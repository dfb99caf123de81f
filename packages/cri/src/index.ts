// @cello/cri: the CRI shim (cello-cri). The server, and the pieces its tests and embedders use.
export { startCriServer, type CriServer, type CriServerOptions } from './server.js';
export { ImageStore, type ImageRecord } from './images/image-store.js';
export { RUNTIME_API_VERSION, RUNTIME_NAME } from './runtime-service.js';
export { CRI_VERSION } from './version.js';
