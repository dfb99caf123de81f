import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';

/**
 * The error model of every package: each error raised on purpose is a `CelloError` whose `code`
 * is one of these stable names (gRPC's canonical codes, spelled as words so that logs, tests and
 * callers outside gRPC read them without a table). Callers branch on `code` or on the subclass,
 * never on the message; `toStatus` is the one place a code becomes a gRPC status.
 */
export type ErrorCode =
  | 'InvalidArgument'
  | 'NotFound'
  | 'AlreadyExists'
  | 'Conflict'
  | 'FailedPrecondition'
  | 'PermissionDenied'
  | 'Unauthenticated'
  | 'ResourceExhausted'
  | 'Unavailable'
  | 'DeadlineExceeded'
  | 'Unimplemented'
  | 'Internal';

const GRPC_STATUS: Record<ErrorCode, Status> = {
  InvalidArgument: Status.INVALID_ARGUMENT,
  NotFound: Status.NOT_FOUND,
  AlreadyExists: Status.ALREADY_EXISTS,
  Conflict: Status.ABORTED,
  FailedPrecondition: Status.FAILED_PRECONDITION,
  PermissionDenied: Status.PERMISSION_DENIED,
  Unauthenticated: Status.UNAUTHENTICATED,
  ResourceExhausted: Status.RESOURCE_EXHAUSTED,
  Unavailable: Status.UNAVAILABLE,
  DeadlineExceeded: Status.DEADLINE_EXCEEDED,
  Unimplemented: Status.UNIMPLEMENTED,
  Internal: Status.INTERNAL,
};

export class CelloError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    // The subclass's own name, so logs and stack traces say ConfigError rather than Error.
    this.name = new.target.name;
  }
}

/** The gRPC status a code maps to. */
export function grpcStatus(code: ErrorCode): Status {
  return GRPC_STATUS[code];
}

/** A gRPC status code's canonical name (`RESOURCE_EXHAUSTED`), as metrics and logs label it; UNKNOWN for a number gRPC does not define. */
export function grpcCodeName(code: number): string {
  return Status[code] ?? 'UNKNOWN';
}

/** What to log or show of an error: a gRPC error's details (its message repeats the code), else its message. */
export function errMsg(err: unknown): string {
  if (err && typeof err === 'object' && 'details' in err && typeof (err as ServiceError).details === 'string' && (err as ServiceError).details) {
    return (err as ServiceError).details;
  }
  return err instanceof Error ? err.message : String(err);
}

/**
 * The gRPC error a handler answers with. A CelloError maps by its code; an error that already
 * carries a gRPC status (one relayed from an agent, say) passes through unchanged; anything else
 * is a bug and goes out as INTERNAL with its message.
 */
export function toStatus(err: unknown): ServiceError {
  if (err instanceof CelloError) {
    return Object.assign(new Error(err.message), { name: err.name, code: grpcStatus(err.code), details: err.message, metadata: new Metadata() });
  }
  const se = err as ServiceError;
  if (se && typeof se === 'object' && typeof se.code === 'number') return se;
  const message = errMsg(err);
  return Object.assign(new Error(message), { code: Status.INTERNAL, details: message, metadata: new Metadata() });
}
