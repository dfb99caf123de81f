// `npm start -- --smoke` (CI): what the banner suggests, checked — a call without credentials is
// refused, then logs, exec and port-forward work through cellctl.
import { spawn, spawnSync } from 'node:child_process';
import { httpStatus, until } from './wait.mjs';

/**
 * `cellctl(argv, opts)` runs cellctl with the local user's credentials; `cellctlArgv` is the
 * command line without them (for the anonymous call and the long-running port-forward).
 */
export async function smoke({ cellctl, cellctlArgv, freePort, note }) {
  const check = (what, r, expect) => {
    if (r.status !== 0 || !expect(r.stdout)) throw new Error(`smoke: ${what} failed (exit ${r.status}): ${(r.stdout + r.stderr).slice(-500)}`);
    note(`ok: ${what}`);
  };
  // Secure by default: the API takes no call without credentials.
  const anon = spawnSync(process.execPath, [...cellctlArgv({ anonymous: true }), 'get', 'pods'], { encoding: 'utf8', timeout: 30_000 });
  if (anon.status === 0) throw new Error('smoke: a call without credentials was accepted');
  note('ok: a call without credentials is refused');
  check('cellctl logs hello-job', cellctl(['logs', 'hello-job'], { timeout: 30_000 }), (o) => o.trim().length > 0);
  check('cellctl exec init-shared -- cat /data/motd', cellctl(['exec', 'init-shared', '--', 'cat', '/data/motd'], { timeout: 30_000 }), (o) => o.trim().length > 0);
  const port = await freePort();
  const pf = spawn(process.execPath, [...cellctlArgv(), 'port-forward', 'web', `${port}:8080`], { stdio: 'ignore' });
  try {
    await until('port-forward to web', async () => (await httpStatus(`http://127.0.0.1:${port}/`)) === 200, 30_000);
    note('ok: cellctl port-forward web');
  } finally {
    pf.kill('SIGTERM');
  }
}
