import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { freePort } from './net.js';
import { waitFor } from './wait.js';

/** A running moto server (a real EC2 API emulator) on a loopback port, owned by one test. */
export interface MotoServer {
  /** http://127.0.0.1:PORT — pass as the AWS SDK's `endpoint`. */
  endpoint: string;
  port: number;
  /** Static credentials moto accepts (any value works); never real ones. */
  credentials: { accessKeyId: string; secretAccessKey: string };
  region: string;
  /** Forgets every resource (POST /moto-api/reset). */
  reset(): Promise<void>;
  /** Stops the server and waits for the process to exit. */
  stop(): Promise<void>;
}

const INSTALL_LINE = "pip3 install 'moto[server]'   (or: npm run setup)";

/**
 * Starts `moto_server` on 127.0.0.1 and a free port and waits (with a deadline) until it answers.
 * Fails with the install line when moto is missing: tests never skip silently.
 * Instances moto creates get invented private/public addresses: tests must never send traffic
 * to them (map them to loopback agents instead).
 */
export async function startMoto(
  opts: {
    timeoutMs?: number;
    region?: string;
    /**
     * Enforce IAM (signatures and policies of users made in moto) after this many AWS requests
     * (moto's INITIAL_NO_AUTH_ACTION_COUNT): the first ones create the users and their keys.
     */
    enforceIamAfter?: number;
  } = {},
): Promise<MotoServer> {
  if (spawnSync('sh', ['-c', 'command -v moto_server'], { stdio: 'ignore' }).status !== 0) {
    throw new Error(`moto_server is not installed; install it with:\n  ${INSTALL_LINE}`);
  }
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
    ...(opts.enforceIamAfter !== undefined ? { env: { ...process.env, INITIAL_NO_AUTH_ACTION_COUNT: String(opts.enforceIamAfter) } } : {}),
  });
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  try {
    await waitFor(
      `moto_server on ${endpoint}`,
      async () => {
        if (exited) throw new Error(`moto_server exited: ${stderr}`);
        const res = await fetch(`${endpoint}/moto-api/`, { signal: AbortSignal.timeout(1000) });
        return res.ok;
      },
      { timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 100 },
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    endpoint,
    port,
    region: opts.region ?? 'us-east-1',
    credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
    async reset() {
      const res = await fetch(`${endpoint}/moto-api/reset`, { method: 'POST', signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`moto reset failed: HTTP ${res.status}`);
    },
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exit;
      clearTimeout(killer);
    },
  };
}
