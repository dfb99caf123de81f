// The controller's errors share @cello/proto's model (CelloError's stable code, toStatus at the
// gRPC edge); this module re-exports it so the controller's modules import errors from one place.
import { CelloError } from '@cello/proto';

export { CelloError, type ErrorCode, grpcStatus, toStatus } from '@cello/proto';

/** A configuration the controller or cellctl cannot use: the message names the file and the field. */
export class ConfigError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}
