// Assembles a running controller from its configuration: store, provider, API server, metrics
// endpoint, and the reconciler, which runs only while this process holds the store's
// leadership (so two controllers on one etcd never both act).
import { createServer, type Server as HttpServer } from 'node:http';
import { hostname } from 'node:os';
import { openStore, StoreClosedError, type Store, type StoreConfig } from './store/index.js';
import type { CellProvider } from './providers/provider.js';
import { LocalProvider } from './providers/local/local.js';
import { AgentPool, insecureAgentCredentials, type AgentAccess, type AgentCredentials } from './dispatch/agents.js';
import { Reconciler, type BootstrapFn } from './dispatch/reconciler.js';
import { ControllerApi } from './api/server.js';
import { Metrics } from './obs/metrics.js';
import type { Logger } from './obs/logger.js';
import type { Config } from './config.js';

export interface ControllerHandle {
  apiPort: number;
  metricsPort: number;
  store: Store;
  provider: CellProvider;
  metrics: Metrics;
  /** The reconciler while this process leads; undefined otherwise. */
  reconciler(): Reconciler | undefined;
  isLeader(): boolean;
  /** terminateCells: also end every cell this controller owns (development runs). */
  stop(opts?: { terminateCells?: boolean }): Promise<void>;
}

export interface StartOptions {
  log: Logger;
  /** Overrides the provider built from config (tests, the simulated provider of the benchmark). */
  provider?: CellProvider;
  store?: Store;
  agentCredentials?: AgentCredentials;
  /** Overrides how agents are reached (the benchmark's simulated agents). */
  agents?: AgentAccess;
  bootstrap?: BootstrapFn;
  /** Name of this replica in leader election. */
  candidate?: string;
  tickMs?: number;
  /** Called when the controller cannot go on (its store closed under it); the daemon exits. */
  onFatal?: (err: Error) => void;
}

export function providerFromConfig(config: Config): CellProvider {
  const p = config.provider;
  if (p.kind === 'local') {
    return new LocalProvider({
      root: p.root,
      ...(p.agentCommand ? { agentCommand: p.agentCommand } : {}),
      agentArgs: p.agentArgs,
      insecureRegistries: p.insecureRegistries,
      network: p.network,
      ...(p.maxCells !== undefined ? { maxCells: p.maxCells } : {}),
    });
  }
  throw new Error(`provider.kind: "${p.kind}" is not available in this build`);
}

function storeConfig(config: Config, log: Logger): StoreConfig {
  const s = config.store;
  const logger = { warn: (o: object, m: string) => log.warn(o, m), info: (o: object, m: string) => log.info(o, m) };
  if (s.kind === 'embedded') return { kind: 'embedded', dir: s.dir, ...(s.compactBytes ? { compactBytes: s.compactBytes } : {}), logger };
  return {
    kind: 'etcd',
    endpoints: s.endpoints,
    ...(s.prefix ? { prefix: s.prefix } : {}),
    ...(s.requestTimeoutMs ? { requestTimeoutMs: s.requestTimeoutMs } : {}),
    ...(s.auth ? { auth: s.auth } : {}),
    logger,
  };
}

export async function startController(config: Config, o: StartOptions): Promise<ControllerHandle> {
  const log = o.log;
  if (config.security.mode === 'mtls' && !o.agentCredentials && !o.agents) {
    throw new Error('security.mode: mtls needs the controller CA, which is not wired into this build yet; use insecure-dev for local development');
  }
  const store = o.store ?? (await openStore(storeConfig(config, log)));
  const provider = o.provider ?? providerFromConfig(config);
  const metrics = new Metrics({ defaults: true });
  const agents: AgentAccess = o.agents ?? new AgentPool(o.agentCredentials ?? insecureAgentCredentials);
  const types = await provider.instanceTypes();
  const api = new ControllerApi({ store, agents, log: log.child({ component: 'api' }), controllerId: config.controllerId, providerName: provider.name, instanceTypes: types });
  const apiPort = await api.listen(config.api.listen);
  const metricsServer = await serveMetrics(config.metrics.listen, metrics);
  const metricsPort = (metricsServer.address() as { port: number }).port;
  log.info({ api: config.api.listen.replace(/:\d+$/, `:${apiPort}`), metricsPort, store: store.kind, provider: provider.name, controllerId: config.controllerId }, 'controller listening');

  let reconciler: Reconciler | undefined;
  let stopping = false;
  const stopAll = new AbortController();
  const candidate = o.candidate ?? `${hostname()}-${process.pid}`;

  const lead = async () => {
    while (!stopping) {
      let leadership;
      try {
        leadership = await store.campaign('controller', candidate, { ttlSeconds: 10, signal: stopAll.signal });
      } catch (err) {
        if (stopping) return;
        if (err instanceof StoreClosedError) {
          log.fatal({ err: err.message }, 'store closed; cannot continue');
          o.onFatal?.(err);
          return;
        }
        log.warn({ err: (err as Error).message }, 'leader election failed; retrying');
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      log.info({ candidate }, 'elected leader');
      metrics.isLeader.set(1);
      const r = new Reconciler({
        store,
        provider,
        controllerId: config.controllerId,
        agents,
        log: log.child({ component: 'reconciler' }),
        metrics,
        warmPool: config.warmPool,
        timeouts: config.timeouts,
        overhead: { cpuMillis: config.selection.agentOverhead.cpuMillis, memoryBytes: config.selection.agentOverhead.memoryMiB * 1024 * 1024 },
        defaultSpot: config.selection.spot,
        retainFinishedSeconds: config.pods.retainFinishedSeconds,
        maxCellFailures: config.pods.maxCellFailures,
        gcIntervalSeconds: config.gc.intervalSeconds,
        ...(o.tickMs ? { tickMs: o.tickMs } : {}),
        ...(o.bootstrap ? { bootstrap: o.bootstrap } : {}),
      });
      reconciler = r;
      try {
        await r.start();
      } catch (err) {
        log.error({ err: (err as Error).message }, 'reconciler failed to start');
        await r.stop();
        reconciler = undefined;
        await leadership.resign().catch(() => undefined);
        throw err;
      }
      await new Promise<void>((resolve) => {
        if (leadership.signal.aborted || stopAll.signal.aborted) return resolve();
        leadership.signal.addEventListener('abort', () => resolve(), { once: true });
        stopAll.signal.addEventListener('abort', () => resolve(), { once: true });
      });
      await r.stop();
      reconciler = undefined;
      metrics.isLeader.set(0);
      if (!stopping) log.warn({ candidate, why: String(leadership.signal.reason ?? '') }, 'lost leadership; reconciler stopped');
      else await leadership.resign().catch(() => undefined);
    }
  };
  const leading = lead();
  leading.catch((err) => log.error({ err: (err as Error).message }, 'leadership loop ended'));

  return {
    apiPort,
    metricsPort,
    store,
    provider,
    metrics,
    reconciler: () => reconciler,
    isLeader: () => reconciler !== undefined,
    async stop(so = {}) {
      stopping = true;
      stopAll.abort();
      await leading.catch(() => undefined);
      await api.close();
      if (so.terminateCells) {
        const owned = await provider.listOwned(config.controllerId);
        if (owned.length) {
          log.info({ cells: owned.length }, 'terminating cells');
          await provider.terminate(owned.map((i) => i.instanceId));
        }
      }
      await new Promise<void>((r) => metricsServer.close(() => r()));
      metricsServer.closeAllConnections();
      agents.closeAll();
      await provider.close();
      if (!o.store) await store.close();
    },
  };
}

async function serveMetrics(listen: string, metrics: Metrics): Promise<HttpServer> {
  const i = listen.lastIndexOf(':');
  const host = listen.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(i + 1));
  const server = createServer((req, res) => {
    if (req.url === '/metrics') {
      metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(text);
        },
        (err: Error) => {
          res.writeHead(500);
          res.end(err.message);
        },
      );
    } else if (req.url === '/healthz') {
      res.writeHead(200);
      res.end('ok\n');
    } else {
      res.writeHead(404);
      res.end('not found: try /metrics or /healthz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
