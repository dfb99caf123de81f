// One freePort for tests and the runtime (the local provider picks its agents' ports with it).
export { freePort } from '@cello/proto';
