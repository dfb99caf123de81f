// The cello-cri CLI: its help teaches, and bad flags, files and state fail the start with an
// error that names what is wrong (the process exits; nothing is served).
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { startShim } from './shim.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli.js');
const dir = mkdtempSync(join(tmpdir(), 'cello-cri-cli-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) =>
      res({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('cello-cri', () => {
  it('--help says what works, what does not yet, and how a kubelet uses it', async () => {
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toContain('What works today: the ImageService');
    expect(top.stdout).toContain('UNIMPLEMENTED');
    expect(top.stdout).toContain('streaming server');
    const serve = await cli(['serve', '--help']);
    expect(serve.code).toBe(0);
    for (const flag of [
      '--listen',
      '--state-dir',
      '--registry-config',
      '--streaming-listen',
      '--streaming-idle-timeout',
      '--streaming-tls-cert',
      '--streaming-tls-key',
      '--insecure-registry',
      '--platform',
      '--controller-config',
      '--sandbox-image',
      '--kubelet-pods-dir',
      '--volume-sync-seconds',
      '--container-runtime-endpoint=unix://',
    ]) {
      expect(serve.stdout).toContain(flag);
    }
  });

  it('refuses a relative socket path, and a path that holds something other than a socket', async () => {
    const rel = await cli(['serve', '--listen', 'cri.sock', '--state-dir', join(dir, 's1')]);
    expect(rel.code).toBe(1);
    expect(rel.stderr).toContain('--listen "cri.sock": expected an absolute socket path');
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    const occupied = await cli(['serve', '--listen', file, '--state-dir', join(dir, 's2')]);
    expect(occupied.code).toBe(1);
    expect(occupied.stderr).toContain('exists and is not a socket');
    expect(readFileSync(file, 'utf8')).toBe('keep me');
    const sync = await cli(['serve', '--listen', join(dir, 'sync.sock'), '--state-dir', join(dir, 's3'), '--volume-sync-seconds', 'soon']);
    expect(sync.code).toBe(1);
    expect(sync.stderr).toContain('--volume-sync-seconds "soon": expected a positive number');
    // Off loopback the streaming server needs TLS (its URLs are credentials); cert and key go together.
    const open = await cli(['serve', '--listen', join(dir, 'tls1.sock'), '--state-dir', join(dir, 's6'), '--streaming-listen', '0.0.0.0:10010']);
    expect(open.code).toBe(1);
    expect(open.stderr).toContain('--streaming-listen "0.0.0.0:10010" is not a loopback address');
    expect(open.stderr).toContain('Give --streaming-tls-cert FILE and --streaming-tls-key FILE (PEM) to serve HTTPS, or listen on loopback');
    const half = await cli(['serve', '--listen', join(dir, 'tls2.sock'), '--state-dir', join(dir, 's7'), '--streaming-tls-cert', join(dir, 'cert.pem')]);
    expect(half.code).toBe(1);
    expect(half.stderr).toContain('--streaming-tls-cert and --streaming-tls-key go together');
    writeFileSync(join(dir, 'cert.pem'), 'not a certificate');
    const notPem = await cli([
      'serve',
      '--listen',
      join(dir, 'tls3.sock'),
      '--state-dir',
      join(dir, 's8'),
      '--streaming-tls-cert',
      join(dir, 'cert.pem'),
      '--streaming-tls-key',
      join(dir, 'cert.pem'),
    ]);
    expect(notPem.code).toBe(1);
    expect(notPem.stderr).toContain(`--streaming-tls-cert ${JSON.stringify(join(dir, 'cert.pem'))} / --streaming-tls-key`);
    const missing = await cli([
      'serve',
      '--listen',
      join(dir, 'tls4.sock'),
      '--state-dir',
      join(dir, 's9'),
      '--streaming-tls-cert',
      join(dir, 'nope.pem'),
      '--streaming-tls-key',
      join(dir, 'cert.pem'),
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`--streaming-tls-cert ${JSON.stringify(join(dir, 'nope.pem'))}: ENOENT`);
    for (const idle of ['soon', '4', '1h-5m', '-1s']) {
      const r = await cli(['serve', '--listen', join(dir, 'idle.sock'), '--state-dir', join(dir, 's5'), '--streaming-idle-timeout', idle]);
      expect(r.code, idle).toBe(1);
      expect(r.stderr).toContain(`--streaming-idle-timeout ${JSON.stringify(idle)}: expected a duration like 4h, 30m, 1h30m, 90s or 500ms (0: never)`);
    }
  });

  it('a bad registries file or platform fails the start naming the field', async () => {
    const cfg = join(dir, 'registries.yaml');
    writeFileSync(cfg, 'registries:\n  "reg.example:5000": {mirrors: [{host: "http://x"}]}\n');
    const bad = await cli(['serve', '--listen', join(dir, 'a.sock'), '--state-dir', join(dir, 's3'), '--registry-config', cfg]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('registries["reg.example:5000"].mirrors[0].host');
    const platform = await cli(['serve', '--listen', join(dir, 'b.sock'), '--state-dir', join(dir, 's4'), '--platform', 'linux']);
    expect(platform.code).toBe(1);
    expect(platform.stderr).toContain('invalid platform "linux"');
  });

  it('a damaged image record fails the start naming its file; an interrupted write is cleaned up', async () => {
    const state = join(dir, 's5');
    mkdirSync(join(state, 'images'), { recursive: true });
    const record = join(state, 'images', `${'a'.repeat(64)}.json`);
    writeFileSync(record, '{"version": 1, "id": "trunc');
    const r = await cli(['serve', '--listen', join(dir, 'c.sock'), '--state-dir', state]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`image record ${record} is not valid`);
    const state2 = join(dir, 's6');
    mkdirSync(join(state2, 'images'), { recursive: true });
    const partial = join(state2, 'images', `${'b'.repeat(64)}.json.0a1b2c.tmp`);
    writeFileSync(partial, '{"version": 1');
    const shim = await startShim([], { stateDir: state2 });
    try {
      expect(existsSync(partial)).toBe(false);
    } finally {
      await shim.stop();
    }
  });

  it('a missing controller configuration, and a damaged sandbox record, fail the start naming the file', async () => {
    const missing = await cli(['serve', '--listen', join(dir, 'd.sock'), '--state-dir', join(dir, 's7'), '--controller-config', join(dir, 'nope.yaml')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`--controller-config ${join(dir, 'nope.yaml')}: no such file`);
    // A configuration that parses (the controller need not answer for the start).
    const cfg = join(dir, 'cri-user.yaml');
    writeFileSync(
      cfg,
      'current-context: c\nclusters: [{name: c, cluster: {server: "127.0.0.1:1", insecure: true}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n',
    );
    const state = join(dir, 's8');
    mkdirSync(join(state, 'sandboxes'), { recursive: true });
    const record = join(state, 'sandboxes', `${'c'.repeat(64)}.json`);
    writeFileSync(record, '{"version": 1, "id": "trunc');
    const r = await cli(['serve', '--listen', join(dir, 'e.sock'), '--state-dir', state, '--controller-config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`sandbox record ${record} is not valid`);
  });
});

describe('the node unit (deploy/cello-cri.service)', () => {
  const UNIT = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'deploy', 'cello-cri.service');

  it('systemd-analyze verifies it, and its command line is flags cello-cri serve has', async () => {
    // systemd checks ExecStart's program exists: the unit names the installed path, so the copy
    // verified here points at a wrapper of this build's CLI instead.
    const bin = join(dir, 'cello-cri');
    writeFileSync(bin, `#!/bin/sh\nexec ${process.execPath} ${CLI} "$@"\n`, { mode: 0o755 });
    const unit = readFileSync(UNIT, 'utf8');
    expect(unit).toContain('ExecStart=/usr/local/bin/cello-cri serve ');
    const copy = join(dir, 'cello-cri.service');
    writeFileSync(copy, unit.replaceAll('/usr/local/bin/cello-cri', bin));
    const verify = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8', timeout: 60_000 });
    expect(verify.error, 'systemd-analyze (apt-get install -y systemd)').toBeUndefined();
    expect(verify.stderr + verify.stdout).not.toMatch(/cello-cri\.service/);
    expect(verify.status).toBe(0);

    const line = /^ExecStart=\S+ serve (.*)$/m.exec(unit)![1]!;
    const help = (await cli(['serve', '--help'])).stdout;
    const flags = line.split(/\s+/).filter((w) => w.startsWith('--'));
    expect(flags).toEqual(['--listen', '--state-dir', '--controller-config', '--kubelet-pods-dir', '--streaming-listen']);
    for (const f of flags) expect(help, f).toContain(`${f} <`);
  });
});
