// Stats: the unit and cell figures the collector gathers, answered once per call.
import { status as Status } from '@grpc/grpc-js';
import type { CellAgentServer } from '@cello/proto/cell';
import type { StatsCollector } from '../../stats/index.js';
import { grpcError, type StreamContext } from './context.js';

export function statsRpc(ctx: StreamContext, stats: StatsCollector): CellAgentServer['stats'] {
  return (_call, callback) => {
    stats.collect().then(
      (r) => callback(null, r),
      (err: Error) => {
        ctx.log.error({ err }, 'stats failed');
        callback(grpcError(Status.INTERNAL, `stats failed: ${err.message}`));
      },
    );
  };
}
