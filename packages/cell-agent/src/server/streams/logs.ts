// Logs: one unit's log records, tailed, filtered and followed, with flow control.
import { status as Status, type ServerWritableStream } from '@grpc/grpc-js';
import { toStatus } from '@cello/proto';
import type { CellAgentServer, LogChunk, LogsRequest } from '@cello/proto/cell';
import { packedTextLength } from '../../logs/chunk.js';
import { LogsError, type ContainerLogs } from '../../logs/index.js';
import { failStream, send, type StreamContext } from './context.js';

export function logsRpc(ctx: StreamContext, logsFor: (unit: string) => ContainerLogs | undefined): CellAgentServer['logs'] {
  const { live, metrics, log } = ctx;
  return (call: ServerWritableStream<LogsRequest, LogChunk>) => {
    const req = call.request;
    if (!req.container) return failStream(call, Status.INVALID_ARGUMENT, 'container is required');
    const unitLogs = logsFor(req.container);
    if (unitLogs === undefined) return failStream(call, Status.NOT_FOUND, `container "${req.container}" not found in this pod`);
    const ac = new AbortController();
    const stop = () => ac.abort();
    call.on('cancelled', stop);
    call.on('close', stop);
    live.add(stop);
    const closeSession = req.follow ? metrics?.openSession('logs') : undefined;
    void (async () => {
      try {
        for await (const chunk of unitLogs.read(req, ac.signal)) {
          // (packedTextLength: the packed text stays in its pieces for the serializer to gather.)
          metrics?.streamed('logs', 'out', packedTextLength(chunk) + chunk.entries.reduce((n, e) => n + e.line.length, 0));
          if (!(await send(call, chunk, ac.signal))) return;
        }
        if (!ac.signal.aborted) call.end();
      } catch (err) {
        if (err instanceof LogsError) call.emit('error', toStatus(err));
        else {
          log.error({ err, container: req.container }, 'logs read failed');
          failStream(call, Status.INTERNAL, `reading logs failed: ${(err as Error).message}`);
        }
      } finally {
        live.delete(stop);
        closeSession?.();
      }
    })();
  };
}
