import type { ServiceError } from '@grpc/grpc-js';

/** What to log or show of an error: a gRPC error's details (its message repeats the code), else its message. */
export function errMsg(err: unknown): string {
  if (err && typeof err === 'object' && 'details' in err && typeof (err as ServiceError).details === 'string' && (err as ServiceError).details) {
    return (err as ServiceError).details;
  }
  return err instanceof Error ? err.message : String(err);
}
