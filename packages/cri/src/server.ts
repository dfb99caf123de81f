// The shim's gRPC server: CRI RuntimeService and ImageService on a unix socket only root can
// open (0600). The socket is the whole authentication story of the CRI, as for containerd: the
// kubelet and crictl run as root on the node; anyone else is refused by the kernel.
import { lstatSync, mkdirSync, chmodSync, unlinkSync } from 'node:fs';
import { dirname, isAbsolute } from 'node:path';
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { createRegistryReader, hostPlatform, type Platform, type RegistryConfig } from '@cello/image-puller';
import { CelloError, toStatus } from '@cello/proto';
import type { Logger } from 'pino';
import { ImageServiceService, RuntimeServiceService } from './gen/runtime/v1/api.js';
import { CriImageService } from './images/image-service.js';
import { ImageStore } from './images/image-store.js';
import { runtimeServiceHandlers } from './runtime-service.js';

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
}

export interface CriServer {
  socket: string;
  stop(): Promise<void>;
}

/** A unary handler from an async function; the call's cancellation (deadline, client gone) aborts it. */
function unary<Req, Res>(log: Logger, rpc: string, fn: (req: Req, signal: AbortSignal) => Res | Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    const ac = new AbortController();
    call.on('cancelled', () => ac.abort());
    Promise.resolve()
      .then(() => fn(call.request, ac.signal))
      .then(
        (res) => cb(null, res),
        (err: unknown) => {
          const e = toStatus(err);
          if (e.code === 13) log.error({ rpc, err }, 'CRI call failed');
          else log.info({ rpc, code: e.code, err: e.details }, 'CRI call refused');
          cb(e);
        },
      );
  };
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
  const store = new ImageStore(o.stateDir);
  const reader = createRegistryReader(o.registries, { logger: o.logger });
  const images = new CriImageService({ store, reader, platform: o.platform ?? hostPlatform(), logger: o.logger });
  const log = o.logger;
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
      describeConfig: () => ({ socket: o.socket, stateDir: o.stateDir, registries: Object.keys(o.registries), platform: o.platform ?? hostPlatform() }),
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
  log.info({ socket: o.socket, stateDir: o.stateDir }, 'cello-cri serving');
  let stopped = false;
  return {
    socket: o.socket,
    async stop() {
      if (stopped) return;
      stopped = true;
      // Calls in flight get a moment to finish; then the server goes regardless.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((resolve) => server.tryShutdown(() => resolve())), new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      server.forceShutdown();
      await reader.close();
      try {
        unlinkSync(o.socket);
      } catch {
        /* already gone */
      }
    },
  };
}
