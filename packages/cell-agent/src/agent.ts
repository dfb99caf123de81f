// Assembles the agent: state dir, runc, cgroups, images, the pod manager and the gRPC server
// (cello.cell.v1.CellAgent + grpc.health.v1) with mTLS.
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { execFileSync } from 'node:child_process';
import { experimental, Server, ServerCredentials } from '@grpc/grpc-js';
import type { RegistryConfig } from '@cello/image-puller';
import { HealthService, joinHostPort, splitHostPort, type LineRing } from '@cello/proto';
import { CellCertificatesService } from '@cello/proto/cell';
import { createCertificateService, loadServerIdentity, type ServerIdentity } from './bootstrap/renewal.js';
import type pino from 'pino';
import { detectCgroupMode, hostCgroupDriver, type CgroupDriver } from './cgroups/index.js';
import type { ImageService } from './images/image-service.js';
import { PullerImageService } from './images/puller-images.js';
import { ContainerLogs } from './logs/index.js';
import { ImdsClient } from './cloud/imds.js';
import { AgentMetrics, startMetricsServer, type MetricsServer } from './metrics/index.js';
import { cellAgentServiceDefinition } from './server/wire.js';
import { createStreamHandlers } from './server/stream-handlers.js';
import type { BackoffPolicy } from './pod/backoff.js';
import { PodManager } from './pod/pod-manager.js';
import { PortForwarder } from './portforward/index.js';
import { startPortForwardStreamListener, type PortForwardStreamListener } from './portforward/stream-listener.js';
import { agentPeerPolicy, peerAuthInterceptor, type PeerPolicy } from './server/peer-auth.js';
import { Runc } from './runtime/runc.js';
import { ensurePrivateDir, RUN_BASE } from './runtime/run-dir.js';
import { createService } from './server/service.js';
import { createSyncServices } from './server/services.js';
import { savedRegistries } from './server/configure-registries.js';
import { HostPorts } from './network/hostports.js';
import { ServiceProxy } from './network/services/proxy.js';

export const AGENT_VERSION = '0.1.0';

export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface AgentOptions {
  listen: string; // host:port; port 0 picks a free one
  stateDir: string;
  /** Per-boot state on a tmpfs (FIFOs, instance control files, pod files); default: see defaultRunDir. */
  runDir?: string;
  /** mTLS; undefined means --insecure-dev. */
  tls: TlsFiles | undefined;
  /**
   * With mTLS, client names (spiffe://<trust domain>/client/<name>) served besides the
   * controller, e.g. an operator's for `cell-agent ctl` (server/peer-auth.ts). Default: none.
   */
  allowedClients?: string[];
  /** Per-registry CAs, client certificates, mirrors, rewrites (--registry-config). */
  registries?: RegistryConfig;
  /** Shorthand: these registries speak plain HTTP (--insecure-registry). */
  insecureRegistries?: string[];
  /**
   * Image cache (blobs and unpacked layers); default STATE/images. Safe to share between agents
   * on one machine (the puller locks across processes): the local provider's cells share one.
   */
  imageCacheDir?: string;
  logger: pino.Logger;
  /** The agent's own log lines kept for AgentLogs (cli.ts tees its logger into them). */
  ownLogs?: LineRing;
  runcBinary?: string;
  cgroupParent?: string;
  podNetns?: string;
  podIP?: string;
  cellId?: string;
  seccompProfileDir?: string;
  pidsLimit?: number;
  heartbeatMs?: number;
  /** Serve Prometheus /metrics on this host:port (port 0 picks one); off when undefined. */
  metricsListen?: string;
  /**
   * The port-forward stream port (PortForwardTicket), host:port; default: the --listen host,
   * a free port. false: none (clients use the PortForward gRPC stream).
   */
  streamListen?: string | false;
  /** Keep exec/attach transcripts in the audit log. */
  auditTranscripts?: boolean;
  /**
   * ECR images without a pod credential pull with a token from the cell's own instance role
   * (instance metadata at `imdsUrl`; `endpoint`: the ECR API, tests only). Off when undefined.
   */
  ecrInstanceProfile?: { imdsUrl: string; endpoint?: string };
  /** Tests: image source other than the registry puller. */
  images?: ImageService;
  cgroups?: CgroupDriver;
  backoff?: BackoffPolicy;
  probeSecondMs?: number;
  /** How often emptyDir sizeLimits are checked (the kubelet's eviction period, 10 s); tests: less. */
  emptyDirCheckMs?: number;
}

export interface Agent {
  address: string;
  port: number;
  pod: PodManager;
  /** Per-boot state (FIFOs, instance control files, pod files). runc's root is STATE/runc. */
  runDir: string;
  metrics: AgentMetrics;
  /** Port of the /metrics endpoint, when served. */
  metricsPort: number | undefined;
  /** Port of the port-forward stream listener, when served. */
  streamPort: number | undefined;
  /** Graceful: stop serving; units keep running for the next agent. */
  close(): Promise<void>;
}

/**
 * A per-boot directory for this state dir, under /run (never the world-writable /dev/shm: see
 * runtime/run-dir.ts). Units outlive the agent, not the machine, and so does this.
 */
export function defaultRunDir(stateDir: string): string {
  const id = createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 12);
  return join(RUN_BASE, 'agent', id);
}

function primaryIPv4(): string {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

function netnsIPv4(netns: string): string | undefined {
  try {
    const out = execFileSync('nsenter', [`--net=${netns}`, 'ip', '-o', '-4', 'addr', 'show', 'scope', 'global'], { encoding: 'utf8' });
    const m = /inet (\d+\.\d+\.\d+\.\d+)/.exec(out);
    return m?.[1];
  } catch {
    return undefined;
  }
}

/** True for 127.0.0.0/8, ::1 and localhost (brackets allowed): reachable from this machine only. */
function loopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}

/**
 * Without TLS nothing tells the controller from anyone else, so a plaintext agent may listen on
 * loopback only (development; the local provider's cells): a plaintext agent on a routable
 * address would take pods, execs and port-forwards from whoever reaches it.
 */
function checkPlaintextListen(o: AgentOptions): void {
  if (o.tls) return;
  const listens: Array<[string, string]> = [['--listen', o.listen]];
  if (typeof o.streamListen === 'string') listens.push(['--stream-listen', o.streamListen]);
  for (const [flag, at] of listens) {
    const { host } = splitHostPort(at);
    if (!loopbackHost(host)) {
      throw new Error(
        `${flag} ${at}: without TLS (--insecure-dev) the agent listens only on a loopback address (127.0.0.1, ::1); serve other addresses with --tls-cert/--tls-key/--tls-ca`,
      );
    }
  }
}

export async function startAgent(o: AgentOptions): Promise<Agent> {
  const log = o.logger;
  checkPlaintextListen(o);
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const runDir = o.runDir ?? defaultRunDir(o.stateDir);
  ensurePrivateDir(runDir);
  // runc's root stays in the state dir: other tools (the local cell provider's cleanup, cell
  // image tests) find the cell's containers at STATE/runc.
  const runc = new Runc(o.runcBinary ?? 'runc', join(o.stateDir, 'runc'));
  const registryImages =
    o.images ??
    new PullerImageService({
      root: o.imageCacheDir ?? join(o.stateDir, 'images'),
      // What a controller sent (ConfigureRegistries) before a restart is newer than the flags.
      registries: savedRegistries(o.stateDir) ?? o.registries ?? {},
      plainHttp: o.insecureRegistries ?? [],
      logger: log,
      accessFile: join(o.stateDir, 'image-access.json'),
    });
  // Loaded only when asked for: it brings the AWS SDK.
  const ecr = o.ecrInstanceProfile
    ? (await import('./images/ecr.js')).withEcrInstanceRole(registryImages, {
        imds: new ImdsClient(o.ecrInstanceProfile.imdsUrl),
        ...(o.ecrInstanceProfile.endpoint ? { endpoint: o.ecrInstanceProfile.endpoint } : {}),
        log: log.child({ component: 'ecr' }),
      })
    : undefined;
  const images: ImageService = ecr ?? registryImages;
  const hostIP = primaryIPv4();
  const metrics = new AgentMetrics();
  const podIP = o.podIP ?? (o.podNetns ? netnsIPv4(o.podNetns) : undefined) ?? hostIP;
  const pod = new PodManager({
    stateDir: o.stateDir,
    runDir,
    runc,
    cgroups: o.cgroups ?? hostCgroupDriver(),
    images,
    logger: log,
    cgroupParent: o.cgroupParent ?? '/cello/pod',
    netnsPath: o.podNetns,
    podIP,
    hostIP,
    // The pod's namespace is the cell's (its own on a cloud cell): hostPorts are served there.
    hostPorts: new HostPorts({ netnsPath: o.podNetns }),
    seccompProfileDir: o.seccompProfileDir ?? join(o.stateDir, 'seccomp'),
    pidsLimit: o.pidsLimit,
    ...(o.backoff ? { backoff: o.backoff } : {}),
    ...(o.probeSecondMs ? { probeSecondMs: o.probeSecondMs } : {}),
    ...(o.emptyDirCheckMs ? { emptyDirCheckMs: o.emptyDirCheckMs } : {}),
    logsFor: (_unit, dir) => new ContainerLogs({ dir }),
    onPull: (p) => metrics.recordPull(p),
    onProbe: (unit, probe, ok) => metrics.recordProbe(unit, probe, ok ? 'success' : 'failure'),
  });
  // Loaded before the servers: the gRPC server and the port-forward stream port share it.
  const identity: ServerIdentity | undefined = o.tls ? await loadServerIdentity(o.tls) : undefined;
  // Who may call: fixed at start from the cell's own certificate (a renewal keeps its identity).
  const peers: PeerPolicy | undefined = identity ? agentPeerPolicy(identity.current().certPem, o.allowedClients ?? []) : undefined;
  const { host } = splitHostPort(o.listen);
  // One helper per pod namespace, shared by both port-forward paths.
  const forwarder = new PortForwarder();
  let pfStream: PortForwardStreamListener | undefined;
  if (o.streamListen !== false) {
    const at = splitHostPort(o.streamListen ?? joinHostPort(host, 0));
    pfStream = await startPortForwardStreamListener({
      host: at.host,
      port: at.port,
      ...(identity && peers ? { identity, peers } : {}),
      connect: (port) => forwarder.connect(pod.netnsPath(), port),
      logger: log,
      metrics,
    });
  }
  const streams = createStreamHandlers({
    forwarder,
    ...(pfStream ? { portForwardStream: pfStream } : {}),
    units: pod,
    logsFor: (u) => pod.logsIfAny(u) as ContainerLogs | undefined,
    logger: log,
    auditDir: join(o.stateDir, 'audit'),
    recordTranscripts: o.auditTranscripts ?? false,
    metrics,
    runcPath: o.runcBinary ?? 'runc',
  });
  metrics.setStatsSource(() => streams.statsCollector.collect());
  let metricsServer: MetricsServer | undefined;
  if (o.metricsListen) {
    const at = splitHostPort(o.metricsListen);
    metricsServer = await startMetricsServer(metrics, { host: at.host, port: at.port, onError: (err) => log.warn({ err }, 'metrics refresh failed') });
  }
  let serviceProxy: ServiceProxy | undefined;
  const syncServices = createSyncServices({
    proxy: () => (serviceProxy ??= new ServiceProxy({ netnsPath: o.podNetns, localAddresses: () => [podIP], logger: log, onSync: (r) => metrics.recordServiceSync(r) })),
    logger: log,
  });
  const health = new HealthService({ '': 1, 'cello.cell.v1.CellAgent': 1 });
  const server = new Server({
    'grpc.max_receive_message_length': 64 << 20,
    // Every call of every service on this port, health and certificate renewal included: a
    // uniform rule is one nobody can forget in a new handler, and no other party (another
    // cell, an API user) has any business here, not even to learn that this cell is alive.
    ...(peers
      ? {
          interceptors: [
            peerAuthInterceptor(
              () => peers,
              (method, peer, reason) => log.warn({ method, peer, reason }, 'call refused: the peer is not the controller'),
            ),
          ],
        }
      : {}),
  });
  // The stream RPCs' bulk frames are serialized by hand (server/wire.ts).
  server.addService(
    cellAgentServiceDefinition,
    createService({
      pod,
      logger: log,
      streams,
      info: { version: AGENT_VERSION, cellId: o.cellId ?? os.hostname(), runtime: await runc.version(), cgroupMode: detectCgroupMode(), startedAt: new Date() },
      heartbeatMs: o.heartbeatMs ?? 10_000,
      metrics,
      syncServices,
      images,
      ...(registryImages instanceof PullerImageService ? { registries: { stateDir: o.stateDir, apply: (r: RegistryConfig) => registryImages.setRegistries(r) } } : {}),
      ...(o.ownLogs ? { ownLogs: o.ownLogs } : {}),
    }),
  );
  server.addService(health.definition, health.implementation);
  let creds: ServerCredentials;
  if (o.tls && identity) {
    // The identity is swappable in place: the controller renews it before expiry through
    // CellCertificates, and new handshakes get the new certificate without a restart.
    creds = experimental.createCertificateProviderServerCredentials(identity, identity, true);
    server.addService(CellCertificatesService, createCertificateService({ identity, files: o.tls, logger: log }));
  } else {
    log.warn('INSECURE: --insecure-dev serves the agent API without TLS or client authentication; for local development only');
    creds = ServerCredentials.createInsecure();
  }
  const port = await new Promise<number>((resolve, reject) => server.bindAsync(o.listen, creds, (err, p) => (err ? reject(err) : resolve(p)))).catch(async (err: unknown) => {
    // Not serving after all: the stream port goes too.
    await pfStream?.close();
    forwarder.close();
    throw err;
  });
  const restored = await pod.restore().catch((err) => {
    log.error({ err }, 'restoring the pod from the state dir failed');
    return false;
  });
  log.info({ listen: joinHostPort(host, port), stateDir: o.stateDir, runDir, podIP, restored, metricsPort: metricsServer?.port, streamPort: pfStream?.port }, 'cell-agent serving');
  return {
    address: joinHostPort(host, port),
    port,
    runDir,
    pod,
    metrics,
    metricsPort: metricsServer?.port,
    streamPort: pfStream?.port,
    close: async () => {
      health.shutdown();
      pod.shutdown();
      await pfStream?.close();
      streams.close();
      await serviceProxy?.close();
      await metricsServer?.close();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      ecr?.close();
      if (registryImages instanceof PullerImageService) await registryImages.close();
    },
  };
}
