// One forwarded connection to a pod port, relayed through the controller's gRPC PortForward to
// the pod's cell agent (as cellctl does), whatever carries it to the client (a SPDY data/error
// stream pair in streams.ts, a WebSocket channel pair in ws-streams.ts). Both directions have
// backpressure: a client that does not read pauses the gRPC call, a pod that does not read
// pauses the client.
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { PortForwardFrame } from '@cello/proto/cell';
import type { Controller } from '../controller-client.js';

/** The client's side of one forwarded connection. */
export interface PortSink {
  /** Bytes from the pod; false: the client reads slower, `drained` is called once it caught up. */
  write(b: Buffer, drained: () => void): boolean;
  /** The pod closed its side (or the call ended). */
  end(): void;
  /** The connection failed: `message` is what the kubelet writes on the error stream. */
  fail(message: string): void;
}

export class PortRelay {
  private readonly call: ReturnType<Controller['client']['portForward']>;

  constructor(controller: Controller, t: { ns: string; pod: string }, port: number, user: string, sink: PortSink) {
    const call = controller.client.portForward();
    this.call = call;
    call.write({ frame: { $case: 'target', value: { namespace: t.ns, name: t.pod } } });
    call.write({ frame: { $case: 'forward', value: { frame: { $case: 'start', value: { port, requestedBy: user } } } } });
    const fail = (msg: string) => sink.fail(`error forwarding port ${port} to pod ${t.pod}: ${msg}`);
    const resume = () => call.resume();
    call.on('data', (f: PortForwardFrame) => {
      const fr = f.frame;
      if (!fr) return;
      if (fr.$case === 'data') {
        if (!sink.write(Buffer.from(fr.value), resume)) call.pause();
      } else if (fr.$case === 'closeWrite') sink.end();
      else if (fr.$case === 'error') fail(fr.value);
    });
    call.on('error', (err: ServiceError) => {
      if (err.code !== GrpcStatus.CANCELLED) fail(err.details || err.message);
    });
    call.on('end', () => sink.end());
  }

  /** Bytes for the pod; false: it is not taking them this fast, `drained` is called once it does. */
  data(b: Buffer, drained: () => void): boolean {
    if (this.call.write({ frame: { $case: 'forward', value: { frame: { $case: 'data', value: b } } } })) return true;
    this.call.once('drain', drained);
    return false;
  }

  /** The client closed its writing side. */
  closeWrite(): void {
    this.call.write({ frame: { $case: 'forward', value: { frame: { $case: 'closeWrite', value: true } } } });
  }

  /** The client is done with the connection. */
  end(): void {
    this.call.end();
  }

  cancel(): void {
    this.call.cancel();
  }
}
