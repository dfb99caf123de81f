// The agent's Prometheus metrics: its own work (gRPC calls, image pulls, probes, live stream
// sessions) and the same unit and cell figures Stats serves, refreshed at each scrape. Served on
// a port of its own so scraping never competes with, or needs the credentials of, the gRPC API.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { StatsResponse } from '@cello/proto/cell';
import { grpcCodeName } from '@cello/proto';

export type StreamKind = 'logs' | 'exec' | 'attach' | 'port_forward';

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly grpcCalls: Counter<'method' | 'code'>;
  private readonly grpcSeconds: Histogram<'method'>;
  private readonly pulls: Counter<'result'>;
  private readonly pullBytes: Counter;
  private readonly pullSeconds: Histogram;
  private readonly probes: Counter<'unit' | 'probe' | 'result'>;
  private readonly sessions: Gauge<'kind'>;
  private readonly streamBytes: Counter<'kind' | 'direction'>;
  private readonly pfStreamConnections: Counter<'result'>;
  private readonly serviceSyncSeconds: Histogram<'kind'>;
  private readonly unit: Record<string, Gauge<'unit'>>;
  private readonly cell: Record<string, Gauge>;
  private readonly fs: Record<string, Gauge<'path'>>;
  private readonly net: Record<string, Gauge<'interface'>>;
  private statsSource: (() => Promise<StatsResponse>) | undefined;

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const r = [this.registry];
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'cello_agent_' });
    this.grpcCalls = new Counter({ name: 'cello_agent_grpc_calls_total', help: 'gRPC calls served, by method and status code', labelNames: ['method', 'code'], registers: r });
    this.grpcSeconds = new Histogram({
      name: 'cello_agent_grpc_call_seconds',
      help: 'Duration of gRPC calls (streams: until they end)',
      labelNames: ['method'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300],
      registers: r,
    });
    this.pulls = new Counter({ name: 'cello_agent_image_pulls_total', help: 'Image pulls, by result (success, failure)', labelNames: ['result'], registers: r });
    this.pullBytes = new Counter({ name: 'cello_agent_image_pull_bytes_total', help: 'Bytes downloaded by image pulls', registers: r });
    this.pullSeconds = new Histogram({ name: 'cello_agent_image_pull_seconds', help: 'Duration of image pulls', buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300], registers: r });
    this.probes = new Counter({
      name: 'cello_agent_probe_results_total',
      help: 'Probe results, by unit, probe (startup, liveness, readiness) and result',
      labelNames: ['unit', 'probe', 'result'],
      registers: r,
    });
    this.sessions = new Gauge({ name: 'cello_agent_stream_sessions', help: 'Open stream sessions (logs follow, exec, attach, port-forward)', labelNames: ['kind'], registers: r });
    this.streamBytes = new Counter({ name: 'cello_agent_stream_bytes_total', help: 'Bytes relayed by stream sessions', labelNames: ['kind', 'direction'], registers: r });
    this.serviceSyncSeconds = new Histogram({
      name: 'cello_agent_service_sync_seconds',
      help: 'Time to bring the Service rules (nftables) to a new snapshot, by kind (full: the whole table; partial: only what changed)',
      labelNames: ['kind'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: r,
    });
    this.pfStreamConnections = new Counter({
      name: 'cello_agent_port_forward_stream_connections_total',
      help: 'Connections to the port-forward stream port, by result (ok, bad_token, timeout, connect_failed, tls_refused, forbidden: a certificate of the CA that is not the controller)',
      labelNames: ['result'],
      registers: r,
    });
    const ug = (name: string, help: string) => new Gauge({ name: `cello_unit_${name}`, help, labelNames: ['unit'], registers: r });
    this.unit = {
      cpu: ug('cpu_usage_seconds_total', 'Cumulative CPU time of the unit'),
      cores: ug('cpu_cores', 'Current CPU use of the unit, in cores'),
      mem: ug('memory_usage_bytes', 'Memory use of the unit (cgroup usage)'),
      ws: ug('memory_working_set_bytes', 'Working set of the unit (usage minus inactive file cache)'),
      rss: ug('memory_rss_bytes', 'Anonymous memory of the unit'),
      limit: ug('memory_limit_bytes', 'Memory limit of the unit (0: none)'),
      pids: ug('pids', 'Processes and threads in the unit'),
      restarts: ug('restarts', 'Restarts of the unit'),
    };
    const cg = (name: string, help: string) => new Gauge({ name: `cello_cell_${name}`, help, registers: r });
    this.cell = {
      cpu: cg('cpu_usage_seconds_total', 'Cumulative busy CPU time of the cell'),
      cores: cg('cpu_cores', 'Current CPU use of the cell, in cores'),
      count: cg('cpu_count', 'CPUs of the cell'),
      total: cg('memory_total_bytes', 'Memory of the cell'),
      avail: cg('memory_available_bytes', 'Available memory of the cell'),
      used: cg('memory_used_bytes', 'Used memory of the cell'),
    };
    const fg = (name: string, help: string) => new Gauge({ name: `cello_cell_filesystem_${name}`, help, labelNames: ['path'], registers: r });
    this.fs = { cap: fg('capacity_bytes', 'Filesystem size'), used: fg('used_bytes', 'Filesystem bytes used'), avail: fg('available_bytes', 'Filesystem bytes available') };
    const ng = (name: string, help: string) => new Gauge({ name: `cello_cell_network_${name}`, help, labelNames: ['interface'], registers: r });
    this.net = { rx: ng('receive_bytes_total', 'Bytes received'), tx: ng('transmit_bytes_total', 'Bytes sent') };
  }

  /** Where unit and cell figures come from at scrape time (the Stats collector). */
  setStatsSource(source: () => Promise<StatsResponse>): void {
    this.statsSource = source;
  }

  recordGrpcCall(method: string, code: string, seconds: number): void {
    this.grpcCalls.inc({ method, code });
    this.grpcSeconds.observe({ method }, seconds);
  }

  recordServiceSync(r: { full: boolean; durationMs: number }): void {
    this.serviceSyncSeconds.observe({ kind: r.full ? 'full' : 'partial' }, r.durationMs / 1000);
  }

  recordPull(p: { ok: boolean; bytes: number; seconds: number }): void {
    this.pulls.inc({ result: p.ok ? 'success' : 'failure' });
    if (p.bytes > 0) this.pullBytes.inc(p.bytes);
    this.pullSeconds.observe(p.seconds);
  }

  recordProbe(unit: string, probe: 'startup' | 'liveness' | 'readiness', result: 'success' | 'failure' | 'timeout' | 'error'): void {
    this.probes.inc({ unit, probe, result });
  }

  /** Marks a stream session open; call the returned function when it ends. */
  openSession(kind: StreamKind): () => void {
    this.sessions.inc({ kind });
    let open = true;
    return () => {
      if (open) this.sessions.dec({ kind });
      open = false;
    };
  }

  streamed(kind: StreamKind, direction: 'in' | 'out', bytes: number): void {
    if (bytes > 0) this.streamBytes.inc({ kind, direction }, bytes);
  }

  portForwardStreamConnection(result: 'ok' | 'bad_token' | 'timeout' | 'connect_failed' | 'tls_refused' | 'forbidden'): void {
    this.pfStreamConnections.inc({ result });
  }

  /** Reads fresh unit and cell figures into the gauges. */
  async refresh(): Promise<void> {
    if (this.statsSource === undefined) return;
    const s = await this.statsSource();
    for (const g of [...Object.values(this.unit), ...Object.values(this.fs), ...Object.values(this.net)]) g.reset();
    for (const u of s.units) {
      const l = { unit: u.name };
      this.unit.cpu!.set(l, u.cpuUsageNanos / 1e9);
      this.unit.cores!.set(l, u.cpuCores);
      this.unit.mem!.set(l, u.memoryUsageBytes);
      this.unit.ws!.set(l, u.memoryWorkingSetBytes);
      this.unit.rss!.set(l, u.memoryRssBytes);
      this.unit.limit!.set(l, u.memoryLimitBytes);
      this.unit.pids!.set(l, u.pids);
      this.unit.restarts!.set(l, u.restarts);
    }
    const c = s.cell;
    if (c !== undefined) {
      this.cell.cpu!.set(c.cpuUsageNanos / 1e9);
      this.cell.cores!.set(c.cpuCores);
      this.cell.count!.set(c.cpuCount);
      this.cell.total!.set(c.memoryTotalBytes);
      this.cell.avail!.set(c.memoryAvailableBytes);
      this.cell.used!.set(c.memoryUsedBytes);
      for (const f of c.filesystems) {
        this.fs.cap!.set({ path: f.path }, f.capacityBytes);
        this.fs.used!.set({ path: f.path }, f.usedBytes);
        this.fs.avail!.set({ path: f.path }, f.availableBytes);
      }
      for (const i of c.interfaces) {
        this.net.rx!.set({ interface: i.name }, i.rxBytes);
        this.net.tx!.set({ interface: i.name }, i.txBytes);
      }
    }
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Serves GET /metrics (Prometheus text format) on host:port (port 0 picks a free one). */
export async function startMetricsServer(metrics: AgentMetrics, opts: { host: string; port: number; onError?: (err: unknown) => void }): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && !req.url?.startsWith('/metrics?'))) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics is served here\n');
      return;
    }
    metrics
      .refresh()
      .catch((err) => opts.onError?.(err)) // stale unit figures are better than no metrics at all
      .then(() => metrics.registry.metrics())
      .then((text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text))
      .catch((err) => {
        opts.onError?.(err);
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${String(err)}\n`);
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

type AnyHandler = (...args: any[]) => unknown; // eslint-disable-line @typescript-eslint/no-explicit-any -- any service's handlers, whatever their call types

/**
 * Wraps a gRPC service implementation so every call is counted by method and status code and
 * timed (streams: until they end). Unary handlers are recognised by their (call, callback)
 * signature; streaming ones by listening to the call's end.
 */
export function instrumentService<T extends object>(impl: T, metrics: AgentMetrics, service = 'cello.cell.v1.CellAgent'): T {
  const out: Record<string, AnyHandler> = {};
  for (const [name, fn] of Object.entries(impl) as [string, unknown][]) {
    if (typeof fn !== 'function') continue;
    const method = `/${service}/${name.charAt(0).toUpperCase()}${name.slice(1)}`;
    const handler = fn as AnyHandler;
    if (handler.length >= 2) {
      out[name] = (call: unknown, callback: (err: { code?: number } | null, ...rest: unknown[]) => void) => {
        const t0 = process.hrtime.bigint();
        return handler(call, (err: { code?: number } | null, ...rest: unknown[]) => {
          metrics.recordGrpcCall(method, grpcCodeName(err ? (err.code ?? 2) : 0), Number(process.hrtime.bigint() - t0) / 1e9);
          callback(err, ...rest);
        });
      };
    } else {
      out[name] = (call: NodeJS.EventEmitter) => {
        const t0 = process.hrtime.bigint();
        let done = false;
        const record = (code: number) => {
          if (done) return;
          done = true;
          metrics.recordGrpcCall(method, grpcCodeName(code), Number(process.hrtime.bigint() - t0) / 1e9);
        };
        call.once('finish', () => record(0));
        call.once('cancelled', () => record(1));
        call.on('error', (e: { code?: number }) => record(e?.code ?? 2));
        return handler(call);
      };
    }
  }
  return out as T;
}
