// cello.cell.v1: the agent's API and the pod it runs.
export * from './gen/cello/cell/v1/pod.js';
export * from './gen/cello/cell/v1/status.js';
export * from './gen/cello/cell/v1/services.js';
export * from './gen/cello/cell/v1/agent.js';
// Every generated file declares these helpers; name one copy so the star exports agree.
export { type DeepPartial, type MessageFns, protobufPackage, protobufFileName } from './gen/cello/cell/v1/agent.js';
