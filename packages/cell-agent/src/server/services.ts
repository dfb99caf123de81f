// SyncServices: the controller's stream of the cluster's Services, applied by the cell's
// Service proxy. Updates are handled in order, each acknowledged once its rules are in place;
// a newer stream (the controller reconnecting, a new leader) replaces the one before it.
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { ServicesAck, ServicesUpdate } from '@cello/proto/cell';
import type pino from 'pino';
import type { ServiceProxy } from '../network/services/proxy.js';
import { ServiceState } from '../network/services/state.js';

export interface ServicesDeps {
  /** Made on first use: an agent whose controller never sends Services never runs nft. */
  proxy: () => ServiceProxy;
  logger: pino.Logger;
}

export function createSyncServices(d: ServicesDeps): (call: ServerDuplexStream<ServicesUpdate, ServicesAck>) => void {
  const state = new ServiceState();
  let current: ServerDuplexStream<ServicesUpdate, ServicesAck> | undefined;
  return (call) => {
    current?.end();
    current = call;
    let queue = Promise.resolve();
    const handle = async (u: ServicesUpdate): Promise<void> => {
      if (call !== current) return;
      const r = state.apply(u);
      if (r.kind === 'resync') {
        call.write({ version: state.version, resync: true, error: r.reason, rejected: [] });
        return;
      }
      if (r.rejected.length > 0) d.logger.warn({ rejected: r.rejected, version: u.version }, 'Services refused by the cell');
      try {
        await d.proxy().sync(state.snapshot());
        call.write({ version: u.version, resync: false, error: '', rejected: r.rejected });
      } catch (err) {
        const error = (err as Error).message;
        d.logger.error({ err: error, version: u.version }, 'Service rules not applied');
        call.write({ version: u.version, resync: false, error, rejected: r.rejected });
      }
    };
    call.on('data', (u: ServicesUpdate) => (queue = queue.then(() => handle(u))));
    const done = () => {
      if (current === call) current = undefined;
    };
    call.on('end', () => {
      done();
      void queue.then(() => call.end());
    });
    call.on('cancelled', done);
    call.on('error', done);
  };
}
