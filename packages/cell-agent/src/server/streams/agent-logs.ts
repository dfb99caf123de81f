// AgentLogs: the agent's own log lines (a LineRing from @cello/proto), the kept tail, then new lines while the
// caller follows. A slow reader is paused on, not buffered without bound: past a megabyte
// queued, the stream ends with RESOURCE_EXHAUSTED.
import { status as Status } from '@grpc/grpc-js';
import { AgentLogChunk, type CellAgentServer } from '@cello/proto/cell';
import type { LineRing } from '@cello/proto';
import { grpcError } from './context.js';

const MAX_QUEUED_BYTES = 1 << 20;

export function agentLogsRpc(own: LineRing | undefined): CellAgentServer['agentLogs'] {
  return (call) => {
    if (!own) {
      call.emit('error', grpcError(Status.FAILED_PRECONDITION, 'this agent keeps no log of its own in memory (embedded use)'));
      return;
    }
    const tail = own.tail(call.request.tailLines);
    if (tail.length) call.write(AgentLogChunk.fromPartial({ text: tail.join('') }));
    if (!call.request.follow) {
      call.end();
      return;
    }
    const stop = own.follow((line) => {
      if (call.writableLength > MAX_QUEUED_BYTES) {
        stop();
        call.emit('error', grpcError(Status.RESOURCE_EXHAUSTED, 'the reader fell more than 1 MiB behind the agent log'));
        return;
      }
      call.write(AgentLogChunk.fromPartial({ text: line }));
    });
    call.on('cancelled', stop);
    call.on('close', stop);
  };
}
