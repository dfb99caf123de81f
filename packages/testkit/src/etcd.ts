import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { waitFor } from './wait.js';

/** Files (PEM) of a TLS etcd: its CA, a client certificate it accepts, and one from another CA. */
export interface EtcdTlsFiles {
  dir: string;
  caFile: string;
  clientCertFile: string;
  clientKeyFile: string;
  /** A client certificate and key from an unrelated CA (etcd must refuse it). */
  rogueCertFile: string;
  rogueKeyFile: string;
}

/** A real single-member etcd on loopback ports with a throwaway data dir, owned by one test. */
export interface EtcdServer {
  /** http://127.0.0.1:PORT (https:// with `tls`) — the client URL. */
  endpoint: string;
  endpoints: string[];
  dataDir: string;
  /** With `startEtcd({ tls: true })`: the PKI; etcd then requires a client certificate from its CA. */
  tls?: EtcdTlsFiles;
  /** Current etcd process id (changes on restart). */
  readonly pid: number;
  /** Kills etcd (SIGKILL: a crash) and starts it again on the same ports and data dir. */
  restart(): Promise<void>;
  /** Stops etcd (SIGTERM, then SIGKILL after 3 s) and removes its data dir. */
  stop(): Promise<void>;
}

class EtcdExited extends Error {
  constructor(stderr: string) {
    super(`etcd exited: ${stderr}`);
  }
}

const INSTALL_LINE = 'apt-get install -y etcd-server   (or: npm run setup)';

/** A CA, etcd's server certificate (127.0.0.1), a client certificate, and a rogue CA's client certificate. */
function makeEtcdPki(dir: string): EtcdTlsFiles {
  const ossl = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  for (const ca of ['ca', 'rogue-ca']) ossl(['req', '-x509', ...ec, '-keyout', `${ca}.key`, '-out', `${ca}.pem`, '-days', '1', '-subj', `/CN=etcd test ${ca}`]);
  const leaf = (name: string, ca: string, ext: string) => {
    ossl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    writeFileSync(join(dir, `${name}.ext`), ext);
    ossl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`]);
  };
  leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
  leaf('rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string) => join(dir, f);
  return { dir, caFile: p('ca.pem'), clientCertFile: p('client.pem'), clientKeyFile: p('client.key'), rogueCertFile: p('rogue.pem'), rogueKeyFile: p('rogue.key') };
}

/** etcd's /health over mutual TLS (fetch cannot present a client certificate). */
function healthOverTls(endpoint: string, tls: EtcdTlsFiles): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      `${endpoint}/health`,
      { ca: readFileSync(tls.caFile), cert: readFileSync(tls.clientCertFile), key: readFileSync(tls.clientKeyFile), timeout: 1000 },
      (res) => {
        let body = '';
        res.on('data', (b: Buffer) => (body += b.toString()));
        res.on('end', () => resolve(res.statusCode === 200 && (JSON.parse(body) as { health?: string }).health === 'true'));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Starts `etcd` on 127.0.0.1 (free client and peer ports) and waits, with a deadline, until
 * /health answers. Fails with the install line when etcd is missing: tests never skip silently.
 */
export async function startEtcd(opts: { timeoutMs?: number; tls?: boolean } = {}): Promise<EtcdServer> {
  if (spawnSync('sh', ['-c', 'command -v etcd'], { stdio: 'ignore' }).status !== 0) {
    throw new Error(`etcd is not installed; install it with:\n  ${INSTALL_LINE}`);
  }
  if (opts.tls && spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('openssl is not installed (startEtcd({ tls: true }) makes its certificates with it); install it with:\n  apt-get install -y openssl');
  }
  const dataDir = await mkdtemp(join(tmpdir(), 'cello-etcd-'));
  // The PKI sits inside the data dir, so stop() removes it too.
  const tls = opts.tls ? makeEtcdPki(await mkdtemp(join(dataDir, 'pki-'))) : undefined;
  let endpoint = '';
  let args: string[] = [];
  const choosePorts = async () => {
    const clientPort = await freePort();
    let peerPort = await freePort();
    while (peerPort === clientPort) peerPort = await freePort();
    endpoint = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    args = [
      '--name',
      'default',
      '--data-dir',
      dataDir,
      '--listen-client-urls',
      endpoint,
      '--advertise-client-urls',
      endpoint,
      '--listen-peer-urls',
      peer,
      '--initial-advertise-peer-urls',
      peer,
      '--initial-cluster',
      `default=${peer}`,
      // Progress notifications every second (etcd's default: 10 min; kubeadm sets 5 s). The API
      // server's watch caches move on them when the newest write was of another kind, and a
      // watch without a resourceVersion waits (3 s at most, then fails "Too large resource
      // version") for its cache to reach etcd's newest revision. Etcd older than 3.4.31 (Debian's
      // 3.4.23) cannot be asked for one, so these are the only ones.
      '--experimental-watch-progress-notify-interval',
      '1s',
      '--log-level',
      'error',
      '--logger',
      'zap',
      ...(tls ? ['--cert-file', join(tls.dir, 'server.pem'), '--key-file', join(tls.dir, 'server.key'), '--trusted-ca-file', tls.caFile, '--client-cert-auth'] : []),
    ];
  };
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
      // A loaded CI machine can take many seconds to elect the single member: a generous deadline.
      // An etcd that exits (a port taken since freePort) ends the wait at once.
      await waitFor(
        `etcd on ${endpoint}`,
        async () => {
          if (p.exited) return true;
          if (tls) return healthOverTls(endpoint, tls);
          const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(2000) });
          return res.ok && ((await res.json()) as { health?: string }).health === 'true';
        },
        { timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 100 },
      );
      if (p.exited) throw new EtcdExited(p.stderr);
    } catch (err) {
      child.kill('SIGKILL');
      await p.exit;
      throw err;
    }
  };
  try {
    // A free port can be taken by another process between freePort() and etcd's bind: etcd then
    // exits at once, and a fresh pair of ports is tried (a timeout is not retried).
    for (let attempt = 1; ; attempt++) {
      await choosePorts();
      try {
        await launch();
        break;
      } catch (err) {
        const raced = err instanceof EtcdExited;
        if (!raced || attempt === 3) throw err;
        await rm(join(dataDir, 'member'), { recursive: true, force: true });
      }
    }
  } catch (err) {
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint,
    endpoints: [endpoint],
    dataDir,
    ...(tls ? { tls } : {}),
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
