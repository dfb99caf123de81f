// errMsg lives with the error model in @cello/proto; re-exported for the controller's modules.
export { errMsg } from '@cello/proto';
