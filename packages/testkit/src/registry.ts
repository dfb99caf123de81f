import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { waitFor } from './wait.js';

export interface RegistryServer {
  /** `127.0.0.1:PORT`, the registry part of image references (plain HTTP unless started with `tls`). */
  host: string;
  port: number;
  url: string;
  /** The registry's storage directory (deleted by stop()). */
  dataDir: string;
  /** For a registry that wants client certificates: a directory skopeo takes as --dest-cert-dir. */
  certDir?: string;
  stop(): Promise<void>;
}

/** distribution's `auth: token` section: JWTs signed by a key whose certificate is in rootCertBundle. */
export interface RegistryTokenAuth {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
}

export interface StartRegistryOptions {
  tokenAuth?: RegistryTokenAuth;
  /** htpasswd file (bcrypt) for HTTP Basic auth. */
  htpasswd?: string;
  /**
   * Serve HTTPS with this PEM certificate and key (then `url` is https://). With `clientCas`,
   * every client must present a certificate they signed (distribution's http.tls.clientcas);
   * `client` is the one the testkit itself uses (readiness probe, pushes).
   */
  tls?: { certificate: string; key: string; clientCas?: string[]; client?: { cert: string; key: string } };
}

/** Fails with the exact install line when a command the tests need is missing; never skips. */
export function requireCommand(cmd: string, debianPackage: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  if (r.status !== 0) {
    throw new Error(`${cmd} is not installed: run \`apt-get install -y ${debianPackage}\` (or \`npm run setup\`)`);
  }
}

function probe(port: number, tls: StartRegistryOptions['tls']): Promise<number> {
  return new Promise((resolve, reject) => {
    const client = tls?.client ? { cert: readFileSync(tls.client.cert), key: readFileSync(tls.client.key) } : {};
    const req = (tls ? httpsRequest : request)({ host: '127.0.0.1', port, path: '/v2/', method: 'GET', timeout: 1000, rejectUnauthorized: false, ...client }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

/**
 * Starts CNCF distribution (`docker-registry`) on a free loopback port with temporary storage.
 * The caller stops it (stop() also removes the storage).
 */
export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RegistryServer> {
  requireCommand('docker-registry', 'docker-registry');
  const dir = mkdtempSync(join(tmpdir(), 'cello-registry-'));
  const dataDir = join(dir, 'data');
  const port = await freePort();
  let auth = '';
  if (opts.tokenAuth) {
    const t = opts.tokenAuth;
    auth = `auth:\n  token:\n    realm: ${JSON.stringify(t.realm)}\n    service: ${JSON.stringify(t.service)}\n    issuer: ${JSON.stringify(t.issuer)}\n    rootcertbundle: ${JSON.stringify(t.rootCertBundle)}\n`;
  } else if (opts.htpasswd) {
    auth = `auth:\n  htpasswd:\n    realm: cello-test\n    path: ${JSON.stringify(opts.htpasswd)}\n`;
  }
  const config = join(dir, 'registry.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log: {level: error, accesslog: {disabled: true}}',
      `storage: {filesystem: {rootdirectory: ${JSON.stringify(dataDir)}}, delete: {enabled: true}}`,
      `http: {addr: "127.0.0.1:${port}"${opts.tls ? `, tls: {certificate: ${JSON.stringify(opts.tls.certificate)}, key: ${JSON.stringify(opts.tls.key)}${opts.tls.clientCas ? `, clientcas: ${JSON.stringify(opts.tls.clientCas)}` : ''}}` : ''}}`,
      auth,
    ].join('\n'),
  );
  const child: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-4000);
  });
  let exited = false;
  child.on('exit', () => (exited = true));
  const stop = async (): Promise<void> => {
    if (!exited) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      `docker-registry on 127.0.0.1:${port}`,
      async () => {
        if (exited) throw new Error(`docker-registry exited: ${stderr.trim()}`);
        const s = await probe(port, opts.tls);
        return s === 200 || s === 401;
      },
      { timeoutMs: 60_000 },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const host = `127.0.0.1:${port}`;
  let certDir: string | undefined;
  if (opts.tls?.client) {
    certDir = join(dir, 'certs.d');
    mkdirSync(certDir);
    copyFileSync(opts.tls.client.cert, join(certDir, 'client.cert'));
    copyFileSync(opts.tls.client.key, join(certDir, 'client.key'));
  }
  return { host, port, url: `${opts.tls ? 'https' : 'http'}://${host}`, dataDir, stop, ...(certDir ? { certDir } : {}) };
}
