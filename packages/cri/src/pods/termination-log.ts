// A container's termination message, written back where the kubelet reads it: the host file of its
// termination-log mount (the kubelet finds it in ContainerStatus.mounts). The cell reports the
// message its unit wrote to terminationMessagePath; it goes to that file and not also to the
// status message, which the kubelet would append it to a second time.
import { closeSync, constants, ftruncateSync, openSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';
import { errMsg } from '@cello/proto';
import type { ContainerRecord } from './sandbox-store.js';

/** The kubelet's own cap on a termination message. */
const MAX_MESSAGE_BYTES = 4096;

/** Writes `message` to the container's termination-log file; returns what the status message is to be. */
export function writeTerminationMessage(c: ContainerRecord, message: string, log: Logger): string {
  const m = c.mounts?.find((x) => x.kind === 'terminationLog');
  if (!m) return message;
  try {
    // O_NOFOLLOW: the path was checked to be the kubelet's own file when the container was created;
    // a symlink put in its place since is not followed.
    const fd = openSync(m.hostPath, constants.O_WRONLY | constants.O_NOFOLLOW);
    try {
      ftruncateSync(fd, 0);
      writeSync(fd, Buffer.from(message, 'utf8').subarray(0, MAX_MESSAGE_BYTES));
    } finally {
      closeSync(fd);
    }
    return '';
  } catch (err) {
    log.warn({ container: c.id, path: m.hostPath, err: errMsg(err) }, 'could not write the termination message; it stays in the status message');
    return message;
  }
}
