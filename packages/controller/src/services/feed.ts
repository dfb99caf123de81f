// One SyncServices stream per live cell: a snapshot when the stream opens (or the cell asks
// for one), then, each time the cell has acknowledged an update and the table has moved on,
// the delta since what it acknowledged. One update in flight per cell, so a burst of changes
// reaches a slow cell as one delta instead of a queue.
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { ServicesUpdate, type ServicesAck } from '@cello/proto/cell';
import type { Logger } from 'pino';
import { Histogram, Counter, type Registry } from 'prom-client';
import type { AgentAccess } from '../agents/pool.js';
import { Backoff } from '../util/backoff.js';
import { errMsg } from '../util/errors.js';
import type { ClusterServices } from './cluster-services.js';

interface Stream {
  id: string;
  address: string;
  call?: ClientDuplexStream<ServicesUpdate, ServicesAck>;
  /** The version the cell acknowledged on this stream (0: none yet; it gets a snapshot). */
  acked: number;
  inFlight: boolean;
  closed: boolean;
  retry?: NodeJS.Timeout;
  backoff: Backoff;
}

export interface ServiceFeedOptions {
  services: ClusterServices;
  agents: AgentAccess;
  log: Logger;
  registry?: Registry;
}

export class ServiceFeed {
  private readonly streams = new Map<string, Stream>();
  private readonly propagation: Histogram;
  private readonly failures: Counter<'reason'>;

  constructor(private readonly o: ServiceFeedOptions) {
    const registers = o.registry ? [o.registry] : [];
    this.propagation = new Histogram({
      name: 'cello_services_propagation_seconds',
      help: 'From a Service or EndpointSlice change to its rules being live on a cell (acknowledged by the agent)',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.failures = new Counter({
      name: 'cello_services_sync_failures_total',
      help: 'Service updates a cell could not apply, by reason (error: the agent could not program its rules; resync: it asked for a snapshot; stream: the stream broke)',
      labelNames: ['reason'],
      registers,
    });
    o.services.on('change', this.onChange);
    o.services.on('synced', this.onChange);
  }

  /** Starts the cell's stream if it has none (or its address changed). */
  start(id: string, address: string): void {
    if (!address) return;
    const s = this.streams.get(id);
    if (s && s.address === address && !s.closed) return;
    if (s) this.stop(id);
    const stream: Stream = { id, address, acked: 0, inFlight: false, closed: false, backoff: new Backoff({ baseMs: 500, maxMs: 30_000 }) };
    this.streams.set(id, stream);
    this.connect(stream);
  }

  stop(id: string): void {
    const s = this.streams.get(id);
    if (!s) return;
    s.closed = true;
    if (s.retry) clearTimeout(s.retry);
    s.call?.cancel();
    this.streams.delete(id);
  }

  /** Ends every stream (leadership lost); cells get new ones from the next leader. */
  stopAll(): void {
    for (const id of [...this.streams.keys()]) this.stop(id);
  }

  close(): void {
    this.stopAll();
    this.o.services.off('change', this.onChange);
    this.o.services.off('synced', this.onChange);
  }

  /** The version each cell has acknowledged (for tests and `describe`). */
  acked(id: string): number | undefined {
    return this.streams.get(id)?.acked;
  }

  private readonly onChange = (): void => {
    for (const s of this.streams.values()) this.pump(s);
  };

  private connect(s: Stream): void {
    if (s.closed) return;
    const call = this.o.agents.get(s.id, s.address).syncServices();
    s.call = call;
    s.acked = 0;
    s.inFlight = false;
    call.on('data', (ack: ServicesAck) => this.onAck(s, call, ack));
    const again = (why: string) => {
      if (s.call !== call) return;
      s.call = undefined;
      if (s.closed) return;
      this.failures.inc({ reason: 'stream' });
      this.o.log.debug({ cell: s.id, err: why }, 'SyncServices stream ended; reconnecting');
      s.retry = setTimeout(() => this.connect(s), s.backoff.next());
      s.retry.unref();
    };
    call.on('error', (err) => again(errMsg(err)));
    call.on('end', () => again('ended by the agent'));
    this.pump(s);
  }

  private onAck(s: Stream, call: ClientDuplexStream<ServicesUpdate, ServicesAck>, ack: ServicesAck): void {
    if (s.call !== call) return;
    s.inFlight = false;
    s.backoff.reset();
    if (ack.rejected.length > 0) this.o.log.warn({ cell: s.id, rejected: ack.rejected }, 'cell refused some Services');
    if (ack.resync) {
      this.failures.inc({ reason: 'resync' });
      s.acked = 0;
    } else if (ack.error) {
      // The cell keeps its previous rules; a snapshot after a pause makes it rebuild them.
      this.failures.inc({ reason: 'error' });
      this.o.log.warn({ cell: s.id, err: ack.error }, 'cell could not apply its Service rules; resending');
      s.acked = 0;
      s.inFlight = true;
      s.retry = setTimeout(() => {
        s.inFlight = false;
        this.pump(s);
      }, s.backoff.next());
      s.retry.unref();
      return;
    } else {
      const since = this.o.services.changedAfter(s.acked);
      if (since !== undefined && s.acked > 0) this.propagation.observe((Date.now() - since) / 1000);
      s.acked = ack.version;
    }
    this.pump(s);
  }

  private pump(s: Stream): void {
    const t = this.o.services;
    if (!s.call || s.inFlight || s.closed || !t.isSynced()) return;
    if (s.acked === t.version && s.acked > 0) return;
    const update = (s.acked > 0 ? t.deltaSince(s.acked) : undefined) ?? t.snapshot();
    s.inFlight = true;
    s.call.write(ServicesUpdate.fromPartial(update));
  }
}
