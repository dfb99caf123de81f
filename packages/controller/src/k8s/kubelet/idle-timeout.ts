// The kubelet's streamingConnectionIdleTimeout (default 4 h): an established exec, attach or
// port-forward connection with no traffic either way for that long is closed, as the kubelet's
// streaming server does (spdystream's idle timer over SPDY, the connection deadline over
// WebSocket). Applied to the upgraded socket itself, so SPDY, WebSocket and the SPDY-in-WebSocket
// tunnel are timed alike: any byte read or written (frames, pings, close messages) is traffic.
// Closing the socket ends the session, which cancels its relays to the cell.
import type { Socket } from 'node:net';
import type { Logger } from '../../obs/logger.js';

/** The kubelet's default (KubeletConfiguration.streamingConnectionIdleTimeout). */
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 4 * 3600_000;

/**
 * Closes `socket` after `ms` without a byte either way; 0 turns the timeout off. Call it once the
 * socket is upgraded and owned by the stream (`ws` resets a socket's timeout when it adopts it).
 */
export function closeWhenIdle(socket: Socket, ms: number, log: Logger): void {
  if (!(ms > 0)) return;
  socket.setTimeout(ms, () => {
    log.info({ idleMs: ms }, 'stream idle (no traffic either way): closing it, as the kubelet does');
    socket.destroy();
  });
}

/** "4h", "30m", "1h30m", "90s", "500ms", "0" (no timeout): a Go duration as the kubelet's flag takes it, in milliseconds. */
export function parseIdleTimeout(flag: string, text: string): number {
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;
  let total = 0;
  let at = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    total += Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 3600_000);
    at = re.lastIndex;
  }
  if (at === 0 || at !== text.length) throw new Error(`${flag} ${JSON.stringify(text)}: expected a duration like 4h, 30m, 1h30m, 90s or 500ms (0: never)`);
  // Node's timers take at most 2^31-1 ms (24.8 days); beyond it they fire at once.
  if (total > 2 ** 31 - 1) throw new Error(`${flag} ${JSON.stringify(text)}: at most 596h`);
  return Math.round(total);
}
