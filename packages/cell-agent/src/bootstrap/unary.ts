// The one way the bootstrap and renewal services answer a unary call: the handler's result, or
// its refusal as a gRPC status through toStatus (a CelloError by its code, anything else
// INTERNAL), logged with the caller so a refused controller shows up in the agent's log.
import { toStatus } from '@cello/proto';
import { status, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import type { Logger } from 'pino';

export function refusableUnary<Req, Res>(log: Logger, refusal: string, rpc: string, f: (call: ServerUnaryCall<Req, Res>) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
    Promise.resolve()
      .then(() => f(call))
      .then(
        (res) => cb(null, res),
        (err: unknown) => {
          const se = toStatus(err);
          log.warn({ rpc, peer: call.getPeer(), code: status[se.code], reason: se.details }, refusal);
          cb(se);
        },
      );
  };
}
