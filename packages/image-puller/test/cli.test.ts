import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import {
  buildFixtures,
  makeTestPki,
  pushBusybox,
  pushImage,
  pushLayoutTag,
  startRegistry,
  startTokenIssuer,
  waitExit,
  type RegistryServer,
  type TokenIssuer,
} from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImagePuller } from '../src/index.js';

import { gzipLayer, makeTar } from './helpers/tar.js';

// The bundled CLI, as installed (`bin`); dist/cli.js is its unbundled source.
const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'image-puller.js');

let registry: RegistryServer;
let work: string;
let busybox: string;
let debian: string;

/** Runs the CLI without blocking this process (the token issuer lives here). */
function cli(args: string[], input?: string, env: NodeJS.ProcessEnv = process.env): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => c.kill('SIGKILL'), 120_000);
    c.on('error', reject);
    c.on('close', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
    c.stdin.end(input ?? '');
  });
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: build first (npx turbo run build --filter=@cello/image-puller)`);
  work = mkdtempSync(join(tmpdir(), 'ip-cli-'));
  const [fx, reg] = await Promise.all([buildFixtures('debian'), startRegistry()]);
  registry = reg;
  busybox = await pushBusybox(registry, 'busybox:latest');
  debian = await pushLayoutTag(registry, fx.layout, 'debian-gzip', 'debian:gzip');
}, 600_000);

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('image-puller CLI', () => {
  it('--registry-config: a private CA from the file; without it exit 4 naming the field; a bad file exit 7', async () => {
    const pki = makeTestPki();
    const tlsReg = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key } });
    try {
      const ref = await pushBusybox(tlsReg, 'tls/busybox:1');
      const cfg = join(pki.dir, 'registries.yaml');
      writeFileSync(cfg, `registries:\n  "${tlsReg.host}": {caFile: ca.pem}\n`);
      const refused = await cli(['pull', ref, '--cache', join(work, 'c-tls0'), '--rootfs', join(work, 'rootfs-tls0')]);
      expect(refused.status).toBe(4);
      expect(refused.stderr).toContain(`certificate signed by unknown authority; add the registry's CA (registries["${tlsReg.host}"].caPem or caFile)`);
      const ok = await cli(['pull', ref, '--registry-config', cfg, '--cache', join(work, 'c-tls1'), '--rootfs', join(work, 'rootfs-tls1')]);
      expect(ok.stderr).toBe('');
      expect(ok.status).toBe(0);
      expect(existsSync(join(work, 'rootfs-tls1', 'bin', 'busybox'))).toBe(true);
      writeFileSync(cfg, `registries:\n  "${tlsReg.host}": {mirrors: [{host: "http://m"}]}\n`);
      const bad = await cli(['pull', ref, '--registry-config', cfg, '--cache', join(work, 'c-tls2'), '--rootfs', join(work, 'rootfs-tls2')]);
      expect(bad.status).toBe(7);
      expect(bad.stderr).toContain(`registries["${tlsReg.host}"].mirrors[0].host: expected a registry host`);
    } finally {
      await tlsReg.stop();
      rmSync(pki.dir, { recursive: true, force: true });
    }
  });

  it('pull --rootfs --json --config-out', async () => {
    const cache = join(work, 'c1');
    const r = await cli(['pull', busybox, '--plain-http', '--cache', cache, '--rootfs', join(work, 'rootfs'), '--json', '--config-out', join(work, 'config.json')]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const summary = JSON.parse(r.stdout) as { digest: string; layers: number; bytes: number; seconds: number; reference: string };
    expect(summary.reference).toBe(busybox);
    expect(summary.digest).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect(summary.layers).toBe(1);
    expect(summary.bytes).toBeGreaterThan(400_000);
    expect(summary.seconds).toBeGreaterThan(0);
    expect(lstatSync(join(work, 'rootfs/bin/busybox')).mode & 0o111).toBeTruthy();
    const config = JSON.parse(readFileSync(join(work, 'config.json'), 'utf8')) as { cmd: string[]; env: string[]; labels: Record<string, string> };
    expect(config.cmd).toEqual(['sh']);
    expect(config.labels['org.cello.fixture']).toBe('busybox');
  });

  it('draws a progress bar per layer on a terminal (a real pty through script(1))', async () => {
    const cmd = [process.execPath, CLI, 'pull', busybox, '--plain-http', '--cache', join(work, 'c-tty'), '--rootfs', join(work, 'rootfs-tty')].map((a) => `'${a}'`).join(' ');
    const r = await new Promise<{ status: number | null; out: string }>((resolve, reject) => {
      const c = spawn('script', ['-qfec', cmd, '/dev/null'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      const t = setTimeout(() => c.kill('SIGKILL'), 60_000);
      c.on('error', reject);
      c.on('close', (status) => {
        clearTimeout(t);
        resolve({ status, out });
      });
    });
    expect(r.status).toBe(0);
    // The last drawing shows the one layer complete: its short digest, a full bar, and its size.
    expect(r.out).toMatch(/[a-f0-9]{12} \[#{30}\] (\d+\.\d)\/\1 MiB/);
  });

  it('pull --layers links the cached layer dirs and writes the overlay lowerdir', async () => {
    const cache = join(work, 'c2');
    const out = join(work, 'layers');
    const r = await cli(['pull', busybox, '--plain-http', '--cache', cache, '--layers', out]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(''); // quiet when not on a TTY
    const target = readlinkSync(join(out, '0'));
    expect(target.startsWith(join(cache, 'layers'))).toBe(true);
    expect(readFileSync(join(out, 'lowerdir'), 'utf8').trim()).toBe(target);
  });

  it('inspect prints the config and layers without fetching them; gc removes', async () => {
    const cache = join(work, 'c3');
    const r = await cli(['inspect', debian, '--plain-http', '--cache', cache]);
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as { layers: { digest: string; diffId: string }[]; config: { workingDir: string } };
    expect(info.layers).toHaveLength(5);
    expect(info.config.workingDir).toBe('/opt/app');
    expect(readdirSync(join(cache, 'layers'))).toEqual([]);
    expect((await cli(['pull', busybox, '--plain-http', '--cache', cache, '--layers', join(work, 'l3')])).status).toBe(0);
    const gc = await cli(['gc', '--cache', cache, '--json']);
    expect(gc.status).toBe(0);
    expect((JSON.parse(gc.stdout) as { removedBytes: number }).removedBytes).toBeGreaterThan(400_000);
    expect(readdirSync(join(cache, 'layers'))).toEqual([]);
  });

  it('exit codes distinguish not-found, network, unsafe-content, invalid input', async () => {
    const cache = join(work, 'c4');
    const nf = await cli(['pull', `${registry.host}/busybox:missing`, '--plain-http', '--cache', cache, '--rootfs', join(work, 'x')]);
    expect(nf.status).toBe(2);
    expect(nf.stderr).toMatch(/not-found: .*manifest missing not found/);
    const net = await cli(['pull', '127.0.0.1:1/busybox', '--plain-http', '--cache', cache, '--rootfs', join(work, 'x')]);
    expect(net.status).toBe(4);
    const { ref } = await pushImage(registry, 'evil/dotdot:1', [gzipLayer(await makeTar([{ name: '../../escape', content: 'x' }]))]);
    const bad = await cli(['pull', ref, '--plain-http', '--cache', cache, '--rootfs', join(work, 'x')]);
    expect(bad.status).toBe(6);
    expect(bad.stderr).toContain('../../escape');
    expect((await cli(['pull', 'UPPER/case', '--rootfs', join(work, 'x'), '--cache', cache])).status).toBe(7);
    expect((await cli(['pull', busybox, '--cache', cache])).status).toBe(7); // neither --rootfs nor --layers
    expect((await cli(['pull', busybox, '--cache', cache, '--layers', 'a', '--username', 'u'])).status).toBe(7);
  });

  it('--max-image-entries and --max-image-bytes bound what an image unpacks; bad values name the flag', async () => {
    const cache = join(work, 'c-limits');
    const few = await cli(['pull', busybox, '--plain-http', '--cache', cache, '--rootfs', join(work, 'lim1'), '--max-image-entries', '20']);
    expect(few.status).toBe(6);
    expect(few.stderr).toContain('limit of 20 files and directories (option maxImageEntries; CLI --max-image-entries)');
    const small = await cli(['pull', busybox, '--plain-http', '--cache', cache, '--layers', join(work, 'lim2'), '--max-image-bytes', '1M']);
    expect(small.status).toBe(6);
    expect(small.stderr).toContain('limit of 1048576 bytes (option maxImageBytes; CLI --max-image-bytes)');
    expect((await cli(['pull', busybox, '--plain-http', '--cache', cache, '--rootfs', join(work, 'lim3'), '--max-image-bytes', '64G', '--max-image-entries', '5000'])).status).toBe(
      0,
    );
    const zero = await cli(['pull', busybox, '--cache', cache, '--rootfs', join(work, 'lim4'), '--max-image-entries', '0']);
    expect(zero.status).toBe(7);
    expect(zero.stderr).toContain('--max-image-entries: expected a positive integer, got "0"');
    const junk = await cli(['pull', busybox, '--cache', cache, '--rootfs', join(work, 'lim4'), '--max-image-bytes', '12X']);
    expect(junk.status).toBe(7);
    expect(junk.stderr).toContain('--max-image-bytes: expected a positive size (e.g. 64G), got "12X"');
  });

  it('a crash (kill -9) at any point leaves a cache the next pull repairs', { timeout: 300_000 }, async () => {
    const cache = join(work, 'crash');
    let killed = 0;
    for (const delay of [150, 600, 1500, 3000]) {
      const child = spawn(process.execPath, [CLI, 'pull', debian, '--plain-http', '--cache', cache, '--layers', join(work, 'crash-out')], { stdio: 'ignore' });
      await sleep(delay);
      child.kill('SIGKILL');
      // A pull that finished before the kill has already exited: waitExit does not wait for an
      // 'exit' that will never come again (that was this test's old hang).
      const { signal } = await waitExit(child, { what: 'the killed pull' });
      if (signal === 'SIGKILL') killed++;
    }
    expect(killed).toBeGreaterThan(0);
    const p = new ImagePuller({ root: cache, plainHttp: [registry.host] });
    const img = await p.pull(debian, { signal: AbortSignal.timeout(90_000) });
    expect(img.layerDirs).toHaveLength(5);
    expect(readFileSync(join(img.layerDirs[4]!, 'etc/cello-release'), 'utf8')).toBe('cello fixture\n');
    expect(readdirSync(join(cache, 'tmp'))).toEqual([]);
    expect(readdirSync(join(cache, 'layers'))).toHaveLength(5);
    const flat = join(work, 'crash-flat');
    await p.unpackRootfs(img, flat);
    expect(existsSync(join(flat, 'usr/bin/dpkg'))).toBe(true);
    rmSync(flat, { recursive: true, force: true });
  });

  it('two processes pulling into one cache at once both succeed and share the layers', async () => {
    const cache = join(work, 'multi');
    const run = (out: string) =>
      new Promise<{ code: number | null; stdout: string }>((resolve) => {
        const c = spawn(process.execPath, [CLI, 'pull', debian, '--plain-http', '--cache', cache, '--layers', join(work, out), '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
        let stdout = '';
        c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
        c.on('exit', (code) => resolve({ code, stdout }));
      });
    const [a, b] = await Promise.all([run('m1'), run('m2')]);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    const ja = JSON.parse(a.stdout) as { layerDirs: string[]; fetchedLayers: number };
    const jb = JSON.parse(b.stdout) as { layerDirs: string[]; fetchedLayers: number };
    expect(ja.layerDirs).toEqual(jb.layerDirs);
    expect(ja.fetchedLayers + jb.fetchedLayers).toBe(5); // each blob downloaded once in all
    expect(readdirSync(join(cache, 'layers'))).toHaveLength(5);
  }, 300_000);
});

describe('image-puller CLI credentials', () => {
  let issuer: TokenIssuer;
  let authReg: RegistryServer;
  let ref: string;
  beforeAll(async () => {
    issuer = await startTokenIssuer(work, 'bob', 'pw-from-stdin');
    authReg = await startRegistry({ tokenAuth: issuer });
    ref = await pushBusybox(authReg, 'private/bb:1', { creds: 'bob:pw-from-stdin' });
  });
  afterAll(async () => {
    await authReg?.stop();
    await issuer?.stop();
  });

  it('--username + --password-stdin; wrong password exits with the auth code; Docker config.json is read', async () => {
    const cache = join(work, 'c5');
    const ok = await cli(['pull', ref, '--plain-http', '--cache', cache, '--rootfs', join(work, 'auth-rootfs'), '--username', 'bob', '--password-stdin'], 'pw-from-stdin\n');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    const bad = await cli(['pull', ref, '--plain-http', '--cache', cache, '--rootfs', join(work, 'auth-rootfs2'), '--username', 'bob', '--password-stdin'], 'wrong-pw\n');
    expect(bad.status).toBe(3);
    expect(bad.stderr).not.toContain('wrong-pw');
    const anon = await cli(['pull', ref, '--plain-http', '--cache', join(work, 'c6'), '--rootfs', join(work, 'auth-rootfs3')]);
    expect(anon.status).toBe(3);
    // Docker's config.json (auths) through $DOCKER_CONFIG.
    const dockerDir = join(work, 'docker');
    mkdirSync(dockerDir);
    writeFileSync(join(dockerDir, 'config.json'), JSON.stringify({ auths: { [authReg.host]: { auth: Buffer.from('bob:pw-from-stdin').toString('base64') } } }));
    const r = await cli(['pull', ref, '--plain-http', '--cache', join(work, 'c7'), '--layers', join(work, 'auth-l')], '', { ...process.env, DOCKER_CONFIG: dockerDir });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    // credHelpers: docker-credential-NAME get, the server on stdin, JSON on stdout.
    const bin = join(work, 'bin');
    mkdirSync(bin);
    writeFileSync(
      join(bin, 'docker-credential-cellotest'),
      `#!/bin/sh\nread server\n[ "$1" = get ] && [ "$server" = "${authReg.host}" ] && echo '{"ServerURL":"'$server'","Username":"bob","Secret":"pw-from-stdin"}'\n`,
      { mode: 0o755 },
    );
    writeFileSync(join(dockerDir, 'config.json'), JSON.stringify({ credHelpers: { [authReg.host]: 'cellotest' } }));
    const h = await cli(['pull', ref, '--plain-http', '--cache', join(work, 'c8'), '--layers', join(work, 'auth-h')], '', {
      ...process.env,
      DOCKER_CONFIG: dockerDir,
      PATH: `${bin}:${process.env.PATH}`,
    });
    expect(h.stderr).toBe('');
    expect(h.status).toBe(0);
  });
});
