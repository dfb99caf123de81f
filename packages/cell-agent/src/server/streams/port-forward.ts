// PortForward (one TCP connection to a pod port per call, bytes framed in the gRPC stream) and
// PortForwardTicket (a single-use ticket for the stream port, where bytes flow unframed).
import type { Socket } from 'node:net';
import { status as Status, type ServerDuplexStream } from '@grpc/grpc-js';
import { grpcStatus, toStatus } from '@cello/proto';
import { PortForwardFrame, PortForwardTicketResponse, type CellAgentServer } from '@cello/proto/cell';
import { checkForwardPort, PortForwardError } from '../../portforward/index.js';
import { gatherBytesField, PF_DATA_FIELD } from '../wire.js';
import { failStream, grpcError, peerOf, type StreamContext } from './context.js';

// Largest port-forward frame gathered from socket reads (see flush below).
const PF_MAX_FRAME = 1 << 20;

export function portForwardRpc(ctx: StreamContext): CellAgentServer['portForward'] {
  const { live, metrics, log, forwarder } = ctx;
  return (call: ServerDuplexStream<PortForwardFrame, PortForwardFrame>) => {
    let sock: Socket | undefined;
    let phase: 'wait-start' | 'connecting' | 'open' | 'done' = 'wait-start';
    const pending: Buffer[] = [];
    let pendingEnd = false;
    let closeSession: (() => void) | undefined;
    const done = (err?: { code: Status; message: string }) => {
      if (phase === 'done') return;
      phase = 'done';
      live.delete(abort);
      closeSession?.();
      // On success both directions have ended: let the socket flush and close by itself.
      if (err) sock?.destroy();
      else sock?.end();
      if (err) failStream(call, err.code, err.message);
      else call.end();
    };
    const abort = () => {
      if (phase === 'done') return;
      phase = 'done';
      live.delete(abort);
      closeSession?.();
      sock?.destroy();
    };
    live.add(abort);
    call.on('cancelled', abort);
    call.on('error', abort);
    let clientEnded = false;
    let podEnded = false;
    const maybeDone = () => {
      if (clientEnded && podEnded) done();
    };
    call.on('data', (f: PortForwardFrame) => {
      if (phase === 'done') return;
      const fr = f.frame;
      if (phase === 'wait-start') {
        if (fr?.$case !== 'start') return done({ code: Status.INVALID_ARGUMENT, message: 'the first frame must be start' });
        const port = fr.value.port;
        const bad = checkForwardPort(port);
        if (bad !== undefined) return done({ code: Status.INVALID_ARGUMENT, message: `start.${bad}` });
        phase = 'connecting';
        log.info({ port, peer: peerOf(call as ServerDuplexStream<unknown, unknown>), user: fr.value.requestedBy }, 'port-forward started');
        forwarder.connect(ctx.units.netnsPath(), port).then(
          (s) => {
            if (phase !== 'connecting') return void s.destroy();
            sock = s;
            phase = 'open';
            closeSession = metrics?.openSession('port_forward');
            s.setNoDelay(true);
            for (const b of pending.splice(0)) s.write(b);
            if (pendingEnd) s.end();
            // Reads that arrive in the same turn of the event loop (a busy agent gets many
            // 64 KiB reads per turn) go out as one frame, gathered straight into the encoded
            // message (wire.ts): fewer, larger gRPC messages cost less per byte and add no latency.
            let outq: Buffer[] = [];
            let outBytes = 0;
            const flush = () => {
              if (outq.length === 0 || phase === 'done') return;
              const value = gatherBytesField(PF_DATA_FIELD, outq, outBytes);
              outq = [];
              outBytes = 0;
              metrics?.streamed('port_forward', 'out', value.length);
              if (!call.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value } }))) {
                s.pause();
                call.once('drain', () => s.resume());
              }
            };
            s.on('data', (d: Buffer) => {
              if (outq.length === 0) setImmediate(flush);
              outq.push(d);
              outBytes += d.length;
              if (outBytes >= PF_MAX_FRAME) flush();
            });
            s.on('end', () => {
              if (phase !== 'open') return;
              flush();
              call.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }));
              podEnded = true;
              maybeDone();
            });
            s.on('error', (e) => done({ code: Status.UNAVAILABLE, message: `connection to port ${port} failed: ${e.message}` }));
            s.on('close', () => {
              if (phase === 'open' && !podEnded) done({ code: Status.UNAVAILABLE, message: `connection to port ${port} closed` });
            });
            s.resume(); // the forwarder hands the socket over paused
          },
          (e: Error) => done({ code: e instanceof PortForwardError ? grpcStatus(e.code) : Status.INTERNAL, message: `cannot connect to port ${port} in the pod: ${e.message}` }),
        );
        return;
      }
      switch (fr?.$case) {
        case 'data':
          metrics?.streamed('port_forward', 'in', fr.value.length);
          if (sock) {
            if (!sock.write(fr.value)) {
              call.pause();
              sock.once('drain', () => call.resume());
            }
          } else pending.push(fr.value);
          return;
        case 'closeWrite':
          clientEnded = true;
          if (sock) sock.end();
          else pendingEnd = true;
          maybeDone();
          return;
        case 'error':
          return abort();
        default:
          return;
      }
    });
    call.on('end', () => {
      // The client closed its side of the stream: treat as a half-close if it had not said so.
      if (!clientEnded) {
        clientEnded = true;
        if (sock) sock.end();
        else if (phase === 'wait-start') return done({ code: Status.INVALID_ARGUMENT, message: 'stream ended before the start frame' });
        else pendingEnd = true;
      }
      maybeDone();
    });
  };
}

export function portForwardTicketRpc(ctx: StreamContext): CellAgentServer['portForwardTicket'] {
  return (call, callback) => {
    const stream = ctx.portForwardStream;
    if (stream === undefined) return callback(grpcError(Status.UNIMPLEMENTED, 'this agent has no port-forward stream port; use PortForward'));
    const bad = checkForwardPort(call.request.port);
    if (bad !== undefined) return callback(grpcError(Status.INVALID_ARGUMENT, bad));
    try {
      const t = stream.issue(call.request.port);
      callback(null, PortForwardTicketResponse.fromPartial({ token: t.token, streamPort: stream.port, expires: t.expires }));
    } catch (err) {
      callback(toStatus(err));
    }
  };
}
