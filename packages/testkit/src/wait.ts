import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `probe` until it returns a truthy value or the deadline passes. Only for waiting on
 * external processes that offer no notification (a server starting to listen); code under test
 * should be observed through its own events instead.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  { timeoutMs = 10_000, intervalMs = 50 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v as T;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const cause = lastErr instanceof Error ? `: ${lastErr.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await sleep(intervalMs);
  }
}

/**
 * Resolves with the exit code (or signal) of a child process, also when it has already exited:
 * `child.once('exit')` after the fact waits forever, which is how a process that finished before
 * a test killed it used to hang that test.
 */
export function waitExit(
  child: {
    exitCode: number | null;
    signalCode: NodeJS.Signals | null;
    once(event: 'exit', fn: (code: number | null, signal: NodeJS.Signals | null) => void): unknown;
    pid?: number;
  },
  { timeoutMs = 30_000, what = `process ${child.pid ?? '?'}` }: { timeoutMs?: number; what?: string } = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} to exit`)), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}
