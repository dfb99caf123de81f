// What the kubelet API answers when the agent's call fails: the one gRPC -> HTTP table, for the
// logs route's response status and the Status object that ends an exec or attach stream.
import { status as GrpcStatus } from '@grpc/grpc-js';

/** An HTTP status code and the Kubernetes StatusReason that names it. */
export interface HttpStatus {
  code: number;
  reason: 'NotFound' | 'BadRequest' | 'ServiceUnavailable' | 'InternalError';
}

const HTTP_OF_GRPC: Partial<Record<GrpcStatus, HttpStatus>> = {
  [GrpcStatus.NOT_FOUND]: { code: 404, reason: 'NotFound' },
  [GrpcStatus.INVALID_ARGUMENT]: { code: 400, reason: 'BadRequest' },
  [GrpcStatus.FAILED_PRECONDITION]: { code: 400, reason: 'BadRequest' },
  [GrpcStatus.UNAVAILABLE]: { code: 503, reason: 'ServiceUnavailable' },
};

/** The HTTP status of a failed agent call; anything unexpected is a 500. */
export function httpStatusOf(code: GrpcStatus): HttpStatus {
  return HTTP_OF_GRPC[code] ?? { code: 500, reason: 'InternalError' };
}
