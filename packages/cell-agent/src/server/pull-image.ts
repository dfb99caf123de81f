// PullImage: an image into the cell's cache before any pod asks for it (a warm cell's
// pre-pull), through the same image service and shared cache the pod's units use, so a pod that
// lands here later finds its layers already unpacked. Only the controller may call it (the peer
// check covers every RPC on the port).
import { status as Status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import type { PullImageRequest, PullImageResponse } from '@cello/proto/cell';
import type pino from 'pino';
import { ImagePullFailure, registryOf, type ImageService } from '../images/image-service.js';

/** How a pull failure reads as a gRPC status: the caller's fault, the registry's answer, or the network. */
function statusOf(err: unknown): Status {
  const kind = err instanceof ImagePullFailure ? err.kind : 'unknown';
  if (kind === 'invalid' || kind === 'unsupported') return Status.INVALID_ARGUMENT;
  if (kind === 'not-found' || kind === 'auth') return Status.FAILED_PRECONDITION;
  if (kind === 'network') return Status.UNAVAILABLE;
  return Status.INTERNAL;
}

export function pullImageHandler(images: ImageService, log: pino.Logger) {
  return (call: ServerUnaryCall<PullImageRequest, PullImageResponse>, cb: sendUnaryData<PullImageResponse>): void => {
    const { image, registryCredentials } = call.request;
    if (!image) {
      cb({ code: Status.INVALID_ARGUMENT, details: 'image: an image reference is required' });
      return;
    }
    const cred = registryCredentials.find((r) => r.registry === registryOf(image));
    const auth = cred ? { username: cred.username, password: cred.password, identityToken: cred.identityToken } : undefined;
    const t0 = performance.now();
    const seconds = () => (performance.now() - t0) / 1000;
    void (async () => {
      const have = await images.cached(image, { auth }).catch(() => undefined);
      if (have) return { digest: have.digest, cached: true, downloadedBytes: 0, seconds: seconds() };
      const img = await images.pull(image, { auth });
      return { digest: img.digest, cached: false, downloadedBytes: img.downloadedBytes ?? 0, seconds: seconds() };
    })().then(
      (r) => {
        log.info({ image, digest: r.digest, cached: r.cached, bytes: r.downloadedBytes, seconds: r.seconds }, 'image pre-pulled');
        cb(null, r);
      },
      (err: unknown) => {
        log.warn({ image, err: (err as Error).message }, 'pre-pull failed');
        cb({ code: statusOf(err), details: `pulling ${image}: ${(err as Error).message}` });
      },
    );
  };
}
