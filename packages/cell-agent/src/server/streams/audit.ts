// ListAudit: the newest exec/attach session records (what the sessions module wrote).
import { status as Status } from '@grpc/grpc-js';
import { ListAuditResponse, type CellAgentServer } from '@cello/proto/cell';
import { grpcError, type StreamContext } from './context.js';

export function listAuditRpc(ctx: StreamContext): CellAgentServer['listAudit'] {
  return (call, callback) => {
    const audit = ctx.audit;
    if (audit === undefined) return callback(grpcError(Status.FAILED_PRECONDITION, 'this agent keeps no audit log (no audit directory configured)'));
    try {
      callback(null, ListAuditResponse.fromPartial({ records: audit.list(call.request.limit || 100, call.request.includeTranscript) }));
    } catch (err) {
      callback(grpcError(Status.INTERNAL, `reading the audit log failed: ${(err as Error).message}`));
    }
  };
}
