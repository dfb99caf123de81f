// Small waits for npm start: an HTTP probe that never throws, and a poll with a deadline.
import { request } from 'node:http';

/** The status code of GET url, or 0 when nothing answers within a second. */
export function httpStatus(url) {
  return new Promise((resolve) => {
    const req = request(url, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => {
      req.destroy();
      resolve(0);
    });
    req.end();
  });
}

/** Polls `fn` every 250 ms until it returns something truthy; throws naming `what` after `timeoutMs`. */
export async function until(what, fn, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
