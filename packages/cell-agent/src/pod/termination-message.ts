// A unit's termination message, bounded as the kubelet bounds it: at most 4 KiB per container
// and 12 KiB for the whole pod's statuses (so a pod of many chatty containers cannot bloat its
// status and every watcher's copy of it). The file is the unit's to write: it is read with
// O_NOFOLLOW and only if it is a regular file, and never more than the limit is read.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

export const MAX_CONTAINER_MESSAGE_BYTES = 4096;
export const MAX_POD_MESSAGE_BYTES = 12 * 1024;
/** FallbackToLogsOnError: the last 80 lines, at most 2 KiB (the kubelet's figures). */
export const FALLBACK_LINES = 80;
export const FALLBACK_BYTES = 2048;

/** The per-container limit in a pod of `containers` containers (init units included). */
export function messageLimit(containers: number): number {
  return Math.min(MAX_CONTAINER_MESSAGE_BYTES, Math.floor(MAX_POD_MESSAGE_BYTES / Math.max(1, containers)));
}

/** Up to `limit` bytes of the file, or '' when it is missing, not a regular file or a symlink. */
export function readMessageFile(path: string, limit: number): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return '';
  }
  try {
    if (!fstatSync(fd).isFile()) return '';
    const buf = Buffer.alloc(limit);
    let n = 0;
    while (n < limit) {
      const r = readSync(fd, buf, n, limit - n, n);
      if (r === 0) break;
      n += r;
    }
    return utf8Prefix(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
}

/** FallbackToLogsOnError's message from the unit's last output. */
export function fallbackMessage(tail: string, limit: number): string {
  const lines = tail.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const msg = Buffer.from(lines.slice(-FALLBACK_LINES).join('\n'));
  const max = Math.min(FALLBACK_BYTES, limit);
  return msg.length > max ? utf8Suffix(msg.subarray(msg.length - max)) : msg.toString('utf8');
}

// Cut at a character boundary so the limit holds in bytes without a broken character.
function utf8Prefix(b: Buffer): string {
  let end = b.length;
  for (let i = Math.max(0, b.length - 3); i < b.length; i++) {
    const c = b[i]!;
    const need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (c >= 0xc0 && i + need > b.length) {
      end = i;
      break;
    }
  }
  return b.subarray(0, end).toString('utf8');
}

function utf8Suffix(b: Buffer): string {
  let start = 0;
  while (start < b.length && start < 3 && (b[start]! & 0xc0) === 0x80) start++;
  return b.subarray(start).toString('utf8');
}
