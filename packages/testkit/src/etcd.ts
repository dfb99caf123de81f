import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { waitFor } from './wait.js';

/** A real single-member etcd on loopback ports with a throwaway data dir, owned by one test. */
export interface EtcdServer {
  /** http://127.0.0.1:PORT — the client URL. */
  endpoint: string;
  endpoints: string[];
  dataDir: string;
  pid: number;
  /** Stops etcd (SIGTERM, then SIGKILL after 3 s) and removes its data dir. */
  stop(): Promise<void>;
}

const INSTALL_LINE = 'apt-get install -y etcd-server   (or: npm run setup)';

/**
 * Starts `etcd` on 127.0.0.1 (free client and peer ports) and waits, with a deadline, until
 * /health answers. Fails with the install line when etcd is missing: tests never skip silently.
 */
export async function startEtcd(opts: { timeoutMs?: number } = {}): Promise<EtcdServer> {
  if (spawnSync('sh', ['-c', 'command -v etcd'], { stdio: 'ignore' }).status !== 0) {
    throw new Error(`etcd is not installed; install it with:\n  ${INSTALL_LINE}`);
  }
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const dataDir = await mkdtemp(join(tmpdir(), 'cello-etcd-'));
  const child: ChildProcess = spawn(
    'etcd',
    [
      '--name', 'default',
      '--data-dir', dataDir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `default=${peer}`,
      '--log-level', 'error',
      '--logger', 'zap',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
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
      `etcd on ${endpoint}`,
      async () => {
        if (exited) throw new Error(`etcd exited: ${stderr}`);
        const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        return res.ok && ((await res.json()) as { health?: string }).health === 'true';
      },
      { timeoutMs: opts.timeoutMs ?? 20_000, intervalMs: 100 },
    );
  } catch (err) {
    child.kill('SIGKILL');
    await exit;
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint,
    endpoints: [endpoint],
    dataDir,
    pid: child.pid!,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exit;
        clearTimeout(killer);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
