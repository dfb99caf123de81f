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
  /** Current etcd process id (changes on restart). */
  readonly pid: number;
  /** Kills etcd (SIGKILL: a crash) and starts it again on the same ports and data dir. */
  restart(): Promise<void>;
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
  const args = [
    '--name', 'default',
    '--data-dir', dataDir,
    '--listen-client-urls', endpoint,
    '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer,
    '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `default=${peer}`,
    '--log-level', 'error',
    '--logger', 'zap',
  ];
  let proc: { child: ChildProcess; exited: boolean; exit: Promise<void>; stderr: string };
  const launch = async (): Promise<void> => {
    const child = spawn('etcd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const p = { child, exited: false, exit: Promise.resolve(), stderr: '' };
    p.exit = new Promise<void>((resolve) =>
      child.once('exit', () => {
        p.exited = true;
        resolve();
      }),
    );
    child.stderr?.on('data', (b: Buffer) => {
      p.stderr = (p.stderr + b.toString()).slice(-4000);
    });
    proc = p;
    try {
      await waitFor(
        `etcd on ${endpoint}`,
        async () => {
          if (p.exited) throw new Error(`etcd exited: ${p.stderr}`);
          const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
          return res.ok && ((await res.json()) as { health?: string }).health === 'true';
        },
        { timeoutMs: opts.timeoutMs ?? 20_000, intervalMs: 100 },
      );
    } catch (err) {
      child.kill('SIGKILL');
      await p.exit;
      throw err;
    }
  };
  try {
    await launch();
  } catch (err) {
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint,
    endpoints: [endpoint],
    dataDir,
    get pid() {
      return proc.child.pid!;
    },
    async restart() {
      if (!proc.exited) {
        proc.child.kill('SIGKILL');
        await proc.exit;
      }
      await launch();
    },
    async stop() {
      if (!proc.exited) {
        proc.child.kill('SIGTERM');
        const killer = setTimeout(() => proc.child.kill('SIGKILL'), 3000);
        await proc.exit;
        clearTimeout(killer);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
