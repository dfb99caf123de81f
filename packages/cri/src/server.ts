// The shim's gRPC server: CRI RuntimeService and ImageService on a unix socket only root can
// open (0600). The socket is the whole authentication story of the CRI, as for containerd: the
// kubelet and crictl run as root on the node; anyone else is refused by the kernel.
import { lstatSync, mkdirSync, chmodSync, unlinkSync } from 'node:fs';
import { dirname, isAbsolute } from 'node:path';
import { Server, ServerCredentials, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { createRegistryReader, hostPlatform, type Platform, type RegistryConfig } from '@cello/image-puller';
import { CelloError, errMsg } from '@cello/proto';
import { ControllerApiClient, apiChannelCredentials, cellctlConfigPath, readCellctlConfig, resolveCellctlContext } from '@cello/controller/client';
import { credentials } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ImageServiceService, RuntimeServiceService } from './gen/runtime/v1/api.js';
import { CriImageService } from './images/image-service.js';
import { ImageStore } from './images/image-store.js';
import { runtimeServiceHandlers, unary } from './runtime-service.js';
import { PodService } from './pods/pod-service.js';
import { SandboxStore } from './pods/sandbox-store.js';
import { StreamServer, checkStreamingListen } from './streaming/stream-server.js';

export interface CriServerOptions {
  /** Absolute path of the unix socket (the kubelet's --container-runtime-endpoint=unix://PATH). */
  socket: string;
  /** Where the image records live. */
  stateDir: string;
  registries: RegistryConfig;
  /** The cells' platform (default: this node's). */
  platform?: Platform;
  version: string;
  logger: Logger;
  /**
   * The controller to run pods on: a cellctl configuration file (`controller issue-user` writes
   * one) and optionally its context. Without it, sandboxes are refused (FAILED_PRECONDITION).
   */
  controller?: { config: string; context?: string; server?: string };
  /** The image of the unit that holds a sandbox's cell (containerd's sandbox_image). */
  sandboxImage?: string;
  /** The kubelet's pods directory (its --root-dir + /pods): the only host files shipped to cells. */
  kubeletPodsDir?: string;
  /**
   * HOST:PORT of the streaming server Exec/Attach/PortForward URLs point at (default 127.0.0.1:0,
   * as containerd: the kubelet on this node proxies clients to it).
   */
  streamingListen?: string;
  /** An established stream with no traffic either way this long is closed (default: the kubelet's 4 h; 0: never). */
  streamingIdleTimeoutMs?: number;
  /** PEM certificate and key files: the streaming server speaks HTTPS. Required for a non-loopback streamingListen. */
  streamingTls?: { cert?: string; key?: string };
  /** How often the kubelet's volume files (a rotated token) are re-read and re-shipped. */
  volumeSyncSeconds?: number;
}

export const DEFAULT_STREAMING_LISTEN = '127.0.0.1:0';
export const DEFAULT_SANDBOX_IMAGE = 'registry.k8s.io/pause:3.10';

/** The controller client from a cellctl configuration: the same credentials and checks as cellctl. */
function connectController(c: { config: string; context?: string; server?: string }): { client: ControllerApiClient; server: string } {
  const path = cellctlConfigPath(c.config);
  const cfg = readCellctlConfig(path);
  if (!cfg) throw new CelloError('FailedPrecondition', `--controller-config ${path}: no such file (\`controller issue-user NAME --group GROUP -o FILE\` writes one)`);
  const ctx = resolveCellctlContext(cfg, path, c.context);
  const server = c.server || ctx.server;
  return { client: new ControllerApiClient(server, ctx.credentials ? apiChannelCredentials(ctx.credentials) : credentials.createInsecure()), server };
}

export interface CriServer {
  socket: string;
  /** The streaming server's base URL (absent without a controller). */
  streamingUrl?: string;
  stop(): Promise<void>;
}

/** A stale socket from an earlier run goes; anything else at the path is the operator's to move. */
function clearSocketPath(socket: string): void {
  let st;
  try {
    st = lstatSync(socket);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new CelloError('FailedPrecondition', `--listen ${socket} exists and is not a socket: choose another path or remove it`);
  unlinkSync(socket);
}

export async function startCriServer(o: CriServerOptions): Promise<CriServer> {
  if (!isAbsolute(o.socket)) throw new CelloError('InvalidArgument', `--listen ${JSON.stringify(o.socket)}: expected an absolute socket path, e.g. /run/cello/cri.sock`);
  // Before anything starts: a bad streaming setup fails the start, with or without a controller.
  const streamingTls = checkStreamingListen(o.streamingListen ?? DEFAULT_STREAMING_LISTEN, o.streamingTls ?? {});
  const store = new ImageStore(o.stateDir);
  const reader = createRegistryReader(o.registries, { logger: o.logger });
  const images = new CriImageService({ store, reader, platform: o.platform ?? hostPlatform(), logger: o.logger });
  const log = o.logger;
  const controller = o.controller ? connectController(o.controller) : undefined;
  const sandboxImage = o.sandboxImage ?? DEFAULT_SANDBOX_IMAGE;
  const pods = controller
    ? new PodService({
        controller: controller.client,
        store: new SandboxStore(o.stateDir),
        images: store,
        sandboxImage,
        logger: log,
        ...(o.kubeletPodsDir ? { podsRoot: o.kubeletPodsDir } : {}),
        ...(o.volumeSyncSeconds !== undefined ? { volumeSyncMs: o.volumeSyncSeconds * 1000 } : {}),
      })
    : undefined;
  const streaming = controller
    ? new StreamServer({
        controller: controller.client,
        listen: o.streamingListen ?? DEFAULT_STREAMING_LISTEN,
        logger: log,
        ...(o.streamingIdleTimeoutMs !== undefined ? { idleTimeoutMs: o.streamingIdleTimeoutMs } : {}),
        ...(streamingTls ? { tls: streamingTls } : {}),
      })
    : undefined;
  const streamingUrl = await streaming?.listen();
  const server = new Server({ 'grpc.max_receive_message_length': 16 << 20 });
  const imageHandlers: UntypedServiceImplementation = {
    pullImage: unary(log, 'PullImage', (req: Parameters<CriImageService['pullImage']>[0], signal) => images.pullImage(req, signal)),
    listImages: unary(log, 'ListImages', (req: Parameters<CriImageService['listImages']>[0]) => images.listImages(req)),
    imageStatus: unary(log, 'ImageStatus', (req: Parameters<CriImageService['imageStatus']>[0]) => images.imageStatus(req)),
    removeImage: unary(log, 'RemoveImage', (req: Parameters<CriImageService['removeImage']>[0]) => images.removeImage(req)),
    imageFsInfo: unary(log, 'ImageFsInfo', (req: Parameters<CriImageService['imageFsInfo']>[0]) => images.imageFsInfo(req)),
  };
  server.addService(ImageServiceService, imageHandlers);
  server.addService(
    RuntimeServiceService,
    runtimeServiceHandlers({
      version: o.version,
      logger: log,
      ...(pods ? { pods } : {}),
      ...(streaming ? { streaming } : {}),
      controllerReachable: async () => {
        try {
          await controller?.client.version(3000);
          return undefined;
        } catch (err) {
          return `the controller at ${controller?.server} does not answer: ${errMsg(err)}`;
        }
      },
      describeConfig: () => ({
        socket: o.socket,
        stateDir: o.stateDir,
        registries: Object.keys(o.registries),
        platform: o.platform ?? hostPlatform(),
        controller: controller?.server ?? null,
        sandboxImage,
        streaming: streamingUrl ?? null,
      }),
    }),
  );

  mkdirSync(dirname(o.socket), { recursive: true, mode: 0o755 });
  clearSocketPath(o.socket);
  // The socket is created under a umask that leaves it 0600 from its first instant; the chmod
  // after is for file systems that ignore the umask for sockets.
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${o.socket}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  } finally {
    process.umask(umask);
  }
  chmodSync(o.socket, 0o600);
  log.info({ socket: o.socket, stateDir: o.stateDir, streaming: streamingUrl }, 'cello-cri serving');
  let stopped = false;
  return {
    socket: o.socket,
    ...(streamingUrl ? { streamingUrl } : {}),
    async stop() {
      if (stopped) return;
      stopped = true;
      // Calls in flight get a moment to finish; then the server goes regardless.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((resolve) => server.tryShutdown(() => resolve())), new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      server.forceShutdown();
      await pods?.close();
      await streaming?.close();
      await reader.close();
      controller?.client.close();
      try {
        unlinkSync(o.socket);
      } catch {
        /* already gone */
      }
    },
  };
}
