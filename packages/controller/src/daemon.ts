// Assembles a running controller from its configuration: store, provider, API server, metrics
// endpoint, and the reconciler, which runs only while this process holds the store's
// leadership (so two controllers on one etcd never both act).
import { joinHostPort, splitHostPort, type LineRing } from '@cello/proto';
import { createServer, type Server as HttpServer } from 'node:http';
import { credentials } from '@grpc/grpc-js';
import { hostname } from 'node:os';
import { openStore, StoreClosedError, type Store, type StoreConfig } from './store/index.js';
import type { CellProvider } from './providers/provider.js';
import type { EcrTokens } from './registry/ecr.js';
import { LocalProvider, type LocalProviderOptions } from './providers/local/local.js';
import { BootstrapTokens, CertificateAuthority, RotatingCertificate, SecretBox, type IssuedCertificate } from './security/index.js';
import { bootstrapFnFor } from './bootstrap/index.js';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { ImagePlatformReader } from './selection/image-platforms.js';
import { createRegistryClientFactory } from './selection/registry-client.js';
import { AgentPool, insecureAgentCredentials, mtlsAgentCredentials, type AgentAccess, type AgentCredentials } from './agents/pool.js';
import { Reconciler, type BootstrapFn } from './reconcile/reconciler.js';
import { CellCertificateRenewer } from './agents/cert-renewal.js';
import { ControllerApi } from './api/server.js';
import { apiSecurityFromConfig, dialAddress } from './api/auth/from-config.js';
import { Metrics } from './obs/metrics.js';
import type { Logger } from './obs/logger.js';
import type { Config } from './config.js';
import { startVirtualNodeFromConfig } from './k8s/from-config.js';
import type { ClusterDNS } from '@cello/proto/cell';
import type { KubernetesConfig } from './k8s/config.js';
import { ClusterServices } from './services/cluster-services.js';
import { ServiceFeed } from './services/feed.js';
import { watchClusterServices } from './services/watch.js';

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
  /** This process's recent log lines, shipped by `cellctl dump` (bin/controller.ts tees its logger into one). */
  logRing?: LineRing;
  /** Called when the controller cannot go on (its store closed under it); the daemon exits. */
  onFatal?: (err: Error) => void;
}

/** ECR tokens for the aws provider's pods, unless its `ecr.mode` is off. */
async function ecrTokensFromConfig(config: Config, log: Logger): Promise<EcrTokens | undefined> {
  if (config.provider.kind !== 'aws') return undefined;
  const { parseAwsProviderConfig } = await import('./providers/aws/index.js');
  const { kind: _kind, ...section } = config.provider as Record<string, unknown>;
  const aws = parseAwsProviderConfig(section, 'provider');
  if (aws.ecr.mode !== 'controller') return undefined;
  const { EcrTokens } = await import('./registry/ecr.js');
  return new EcrTokens({
    ...(aws.endpoint ? { endpoint: aws.endpoint } : {}),
    ...(aws.profile ? { profile: aws.profile } : {}),
    refreshBeforeMs: aws.ecr.refreshBeforeMinutes * 60_000,
    log: log.child({ component: 'ecr' }),
  });
}

export async function providerFromConfig(config: Config, extra: { issueCertificate?: LocalProviderOptions['issueCertificate']; log?: Logger } = {}): Promise<CellProvider> {
  const p = config.provider;
  if (p.kind === 'aws') {
    // Loaded on demand: the AWS SDK takes seconds to import, which local runs should not pay.
    const { awsProviderFromConfig } = await import('./providers/aws/index.js');
    return awsProviderFromConfig(p as Record<string, unknown>, { controllerId: config.controllerId, ...(extra.log ? { logger: extra.log.child({ component: 'aws' }) } : {}) });
  }
  if (p.kind === 'gce') {
    const { gceProviderFromConfig } = await import('./providers/gce/index.js');
    return gceProviderFromConfig(p as Record<string, unknown>, { controllerId: config.controllerId, ...(extra.log ? { logger: extra.log.child({ component: 'gce' }) } : {}) });
  }
  if (p.kind === 'local') {
    return new LocalProvider({
      ...(extra.issueCertificate ? { issueCertificate: extra.issueCertificate } : {}),
      root: p.root,
      ...(p.agentCommand ? { agentCommand: p.agentCommand } : {}),
      agentArgs: p.agentArgs,
      insecureRegistries: p.insecureRegistries,
      network: p.network,
      outboundNAT: p.outboundNAT,
      ...(p.maxCells !== undefined ? { maxCells: p.maxCells } : {}),
    });
  }
  throw new Error(`provider.kind: "${(p as { kind: string }).kind}" is not available in this build`);
}

/** The registry reader of architecture-aware scheduling (selection.imagePlatforms); undefined when turned off. */
export function imagePlatformsFromConfig(config: Config): ImagePlatformReader | undefined {
  const c = config.selection.imagePlatforms;
  if (!c.enabled) return undefined;
  // The local cells' plain-HTTP registries are the controller's too.
  const plainHttp = [...c.plainHttpRegistries, ...(config.provider.kind === 'local' ? config.provider.insecureRegistries : [])];
  return new ImagePlatformReader({
    clients: createRegistryClientFactory({ plainHttp, registries: config.registries }),
    tagTtlMs: c.tagTtlSeconds * 1000,
    timeoutMs: c.timeoutSeconds * 1000,
    concurrency: c.concurrency,
  });
}

export function encryptionKey(config: Config): string {
  const s = config.security;
  if (s.encryptionKeyFile) {
    try {
      return readFileSync(s.encryptionKeyFile, 'utf8').trim();
    } catch (err) {
      throw new Error(`security.encryptionKeyFile: ${(err as Error).message}`);
    }
  }
  const v = s.encryptionKeyEnv ? process.env[s.encryptionKeyEnv] : undefined;
  if (!v) throw new Error(`security.encryptionKeyEnv: environment variable ${s.encryptionKeyEnv} is not set`);
  return v.trim();
}

export function storeConfig(config: Config, log: Logger): StoreConfig {
  const s = config.store;
  const logger = { warn: (o: object, m: string) => log.warn(o, m), info: (o: object, m: string) => log.info(o, m) };
  if (s.kind === 'embedded') return { kind: 'embedded', dir: s.dir, ...(s.compactBytes ? { compactBytes: s.compactBytes } : {}), logger };
  return {
    kind: 'etcd',
    endpoints: s.endpoints,
    ...(s.prefix ? { prefix: s.prefix } : {}),
    ...(s.requestTimeoutMs ? { requestTimeoutMs: s.requestTimeoutMs } : {}),
    ...(s.auth ? { auth: s.auth } : {}),
    ...(s.tls ? { tls: s.tls } : {}),
    logger,
  };
}

export async function startController(config: Config, o: StartOptions): Promise<ControllerHandle> {
  const log = o.log;
  const store = o.store ?? (await openStore(storeConfig(config, log)));
  // mTLS: the CA lives in the store (key sealed with the configured key); the controller holds
  // a client certificate renewed before expiry; local cells get certificates issued directly
  // (key written 0600 into the cell dir), remote cells are bootstrapped with their token.
  let agentCredentials = o.agentCredentials;
  let bootstrap = o.bootstrap;
  let issueCertificate: LocalProviderOptions['issueCertificate'];
  let caCertPem: (() => Promise<string>) | undefined;
  let rotating: RotatingCertificate<IssuedCertificate> | undefined;
  const metrics = new Metrics({ defaults: true });
  // Pod secrets are sealed at rest with the configured key (always there with mTLS).
  const hasKey = !!(config.security.encryptionKeyFile || config.security.encryptionKeyEnv);
  let secretBox: SecretBox | undefined;
  try {
    secretBox = hasKey ? new SecretBox(encryptionKey(config)) : undefined;
  } catch (err) {
    // With mTLS the key is required (it also seals the CA); insecure-dev can run without it.
    if (config.security.mode === 'mtls') throw err;
    log.warn({ err: (err as Error).message }, 'the configured encryption key is unusable');
  }
  if (!secretBox) log.warn('no security.encryptionKeyFile: pod secrets are stored unencrypted (insecure-dev only)');
  let renewer: CellCertificateRenewer | undefined;
  // The renewer talks over the agent pool, which is built once the provider is known.
  let pool: AgentAccess | undefined;
  // The CA also serves the API's TLS (unless api.insecure), whatever the agents speak.
  if (!config.api.insecure && !hasKey) {
    throw new Error(
      "security.encryptionKeyFile: required for the API's TLS (it seals the controller CA's key); or set api.insecure: true on a loopback address (development only)",
    );
  }
  const authority =
    (config.security.mode === 'mtls' && !o.agents) || !config.api.insecure ? await CertificateAuthority.loadOrCreate({ store, encryptionKey: encryptionKey(config) }) : undefined;
  if (config.security.mode === 'mtls' && !o.agents) {
    const sec = config.security;
    const ca = authority!;
    rotating = await RotatingCertificate.start(ca, () => ca.issueClientCertificate('controller', { ttlSeconds: sec.controllerCertificateTtlSeconds }), {
      checkEveryMs: sec.rotationCheckSeconds * 1000,
      onRenew: (c) => {
        metrics.certRenewals.inc({ subject: 'controller', outcome: 'ok' });
        log.info({ notAfter: new Date(new X509Certificate(c.certPem).validTo).toISOString() }, 'controller client certificate renewed');
      },
      onError: (err) => {
        metrics.certRenewals.inc({ subject: 'controller', outcome: 'error' });
        log.warn({ err: err.message }, 'controller client certificate renewal failed; will retry');
      },
    });
    const me = rotating;
    // Every cell's certificate is renewed in place before expiry, whichever provider made the cell.
    const r = new CellCertificateRenewer({
      ca,
      client: (cellId, address) => pool!.certificates!(cellId, address),
      ttlSeconds: sec.cellCertificateTtlSeconds,
      log: log.child({ component: 'cert-renewal' }),
      metrics,
    });
    renewer = r;
    agentCredentials ??= mtlsAgentCredentials(() => ({ caPem: ca.certPem, certPem: me.current().certPem, keyPem: me.current().keyPem }), {
      trustDomain: ca.trustDomain,
      onServerCertificate: (cellId, cert) => r.observe(cellId, cert.valid_from, cert.valid_to),
    });
    bootstrap ??= bootstrapFnFor(ca, { ttlSeconds: sec.cellCertificateTtlSeconds, logger: log.child({ component: 'bootstrap' }) });
    issueCertificate = async (cellId, sans) => {
      const ips = sans.filter((x) => isIP(x));
      const c = await ca.issueCellCertificate({ cellId, ips, dnsNames: sans.filter((x) => !isIP(x) && x !== cellId), ttlSeconds: sec.cellCertificateTtlSeconds });
      return { certPem: c.certPem, keyPem: c.keyPem, caPem: ca.certPem };
    };
    caCertPem = async () => ca.certPem;
  }
  const provider = o.provider ?? (await providerFromConfig(config, { ...(issueCertificate ? { issueCertificate } : {}), log }));
  const ecr = await ecrTokensFromConfig(config, log);
  const agents: AgentAccess = o.agents ?? new AgentPool(agentCredentials ?? insecureAgentCredentials);
  pool = agents;
  if (!agents.certificates) renewer = undefined;
  const types = await provider.instanceTypes();
  const imagePlatforms = imagePlatformsFromConfig(config);
  const apiSecurity = await apiSecurityFromConfig(config, authority, log.child({ component: 'api' }));
  const api = new ControllerApi({
    store,
    agents,
    log: log.child({ component: 'api' }),
    controllerId: config.controllerId,
    providerName: provider.name,
    instanceTypes: types,
    auth: apiSecurity.auth,
    ...(secretBox ? { secretBox } : {}),
    ...(provider.refusePod ? { refusePod: provider.refusePod.bind(provider) } : {}),
    support: { config, ...(o.logRing ? { logs: () => o.logRing!.text() } : {}) },
  });
  const apiPort = await api.listen(config.api.listen);
  await apiSecurity.writeAdminCredentials(dialAddress(config.api.listen, apiPort));
  const metricsServer = await serveMetrics(config.metrics.listen, metrics);
  const metricsPort = (metricsServer.address() as { port: number }).port;
  log.info(
    { api: joinHostPort(splitHostPort(config.api.listen).host, apiPort), metricsPort, store: store.kind, provider: provider.name, controllerId: config.controllerId },
    'controller listening',
  );
  // In a cluster, cells program its Services: one watch here, one stream per live cell. The
  // virtual node reads the same table for its pods' KUBERNETES_SERVICE_* environment.
  const clusterServices = config.kubernetes?.enabled ? new ClusterServices() : undefined;
  // The virtual node drives pods through this process's own API, as cellctl does.
  const vnode = config.kubernetes?.enabled
    ? await startVirtualNodeFromConfig(config.kubernetes, {
        controllerAddress: dialAddress(config.api.listen, apiPort),
        controllerCredentials: apiSecurity.clientCredentials ?? credentials.createInsecure(),
        providerName: provider.name,
        instanceTypes: types,
        ...(config.provider.kind === 'local' && config.provider.maxCells !== undefined ? { maxCells: config.provider.maxCells } : {}),
        provider,
        agents,
        ...(clusterServices ? { services: clusterServices } : {}),
        metricsRegistry: metrics.registry,
        log: log.child({ component: 'virtual-node' }),
      })
    : undefined;

  const serviceWatch = vnode && clusterServices ? watchClusterServices(vnode.rest, clusterServices, log.child({ component: 'services' })) : undefined;
  const serviceFeed = clusterServices ? new ServiceFeed({ services: clusterServices, agents, log: log.child({ component: 'services' }), registry: metrics.registry }) : undefined;

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
        savedLogs: { keepBytes: config.pods.keepLogBytes, retainSeconds: config.pods.keepLogsSeconds },
        gcIntervalSeconds: config.gc.intervalSeconds,
        ...(o.tickMs ? { tickMs: o.tickMs } : {}),
        ...(bootstrap ? { bootstrap } : {}),
        ...(caCertPem ? { caCertPem } : {}),
        ...(renewer ? { renewer } : {}),
        ...(serviceFeed ? { serviceFeed } : {}),
        ...(clusterServices && config.kubernetes ? { clusterDNS: clusterDNSFrom(config.kubernetes, clusterServices) } : {}),
        ...(secretBox ? { secretBox } : {}),
        ...(caCertPem ? { tokens: new BootstrapTokens(store) } : {}),
        ...(ecr ? { registryKeyrings: (images: string[]) => ecr.keyrings(images) } : {}),
        ...(imagePlatforms ? { imagePlatforms } : {}),
        ...(Object.keys(config.registries).length > 0 ? { cellRegistriesJson: JSON.stringify({ registries: config.registries }) } : {}),
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
      serviceFeed?.close();
      await serviceWatch?.stop();
      await vnode?.stop();
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
      rotating?.stop();
      ecr?.close();
      apiSecurity.stop();
      await provider.close();
      await imagePlatforms?.close();
      if (!o.store) await store.close();
    },
  };
}

/** The kubelet's --cluster-dns and --cluster-domain: configured, or kube-dns's cluster IP. */
function clusterDNSFrom(k: KubernetesConfig, services: ClusterServices): () => ClusterDNS {
  return () => ({
    nameservers:
      k.clusterDNS ??
      services
        .clusterIPs('kube-system/kube-dns')
        .filter((ip) => !ip.includes(':'))
        .slice(0, 3),
    domain: k.clusterDomain,
  });
}

async function serveMetrics(listen: string, metrics: Metrics): Promise<HttpServer> {
  const { host, port } = splitHostPort(listen);
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
