// The agent bundle (`npm run package:agent`): what is inside, that it is verifiable, and that
// it runs — agent, gRPC and node-pty — on a machine with no Node on the PATH.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitExit, waitFor } from '@cello/testkit';
import { ensureBundles, type Bundles } from './helpers/bundle.js';
import { repoRoot } from './helpers/paths.js';

let bundles: Bundles;
let work: string;
/** A PATH with the few tools the entry script uses and no node. */
let noNodePath: string;

function extract(arch: 'amd64' | 'arm64'): string {
  const dest = join(work, arch);
  mkdirSync(dest);
  execFileSync('tar', ['-xzf', bundles.tarball(arch), '-C', dest]);
  return join(dest, `cell-agent-${bundles.version}-linux-${arch}`);
}

function listFiles(root: string, dir = root): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(root, p));
    else out.push(relative(root, p));
  }
  return out.sort();
}

/** ELF e_machine of a binary: 62 is x86-64, 183 is AArch64. */
function elfMachine(file: string): number {
  const b = readFileSync(file).subarray(0, 20);
  expect(b.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
  expect(b[4]).toBe(2); // 64-bit
  return b.readUInt16LE(18);
}

beforeAll(() => {
  bundles = ensureBundles();
  work = mkdtempSync(join(tmpdir(), 'cello-bundle-test-'));
  noNodePath = join(work, 'bin');
  mkdirSync(noNodePath);
  for (const tool of ['sh', 'readlink', 'dirname']) symlinkSync(execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim(), join(noNodePath, tool));
}, 600_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('agent bundle', () => {
  it('is published with a checksum file that matches, for amd64 and arm64', () => {
    for (const arch of ['amd64', 'arm64'] as const) {
      const tgz = bundles.tarball(arch);
      const line = readFileSync(`${tgz}.sha256`, 'utf8');
      const digest = createHash('sha256').update(readFileSync(tgz)).digest('hex');
      expect(line).toBe(`${digest}  cell-agent-${bundles.version}-linux-${arch}.tar.gz\n`);
      // The same check a user runs by hand.
      execFileSync('sha256sum', ['--quiet', '-c', `${tgz}.sha256`], { cwd: bundles.dir });
    }
  });

  it('lists every file it contains in SHA256SUMS, and they verify', () => {
    const dir = extract('amd64');
    const listed = readFileSync(join(dir, 'SHA256SUMS'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split('  ')[1]);
    expect(listed.sort()).toEqual(listFiles(dir).filter((f) => f !== 'SHA256SUMS'));
    execFileSync('sha256sum', ['--quiet', '-c', 'SHA256SUMS'], { cwd: dir });
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { version: string; arch: string; node: { version: string } };
    expect(manifest).toMatchObject({ version: bundles.version, arch: 'amd64', entrypoint: 'bin/cell-agent' });
    expect(manifest.node.version).toMatch(/^20\./);
  });

  it('is reproducible: root-owned entries with one fixed mtime', () => {
    const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvzf', bundles.tarball('amd64')], { encoding: 'utf8' })
      .trim()
      .split('\n');
    const owners = new Set(listing.map((l) => l.split(/\s+/)[1]));
    const times = new Set(listing.map((l) => l.split(/\s+/).slice(3, 5).join(' ')));
    expect([...owners]).toEqual(['0/0']);
    expect(times.size).toBe(1);
  });

  it('runs `bin/cell-agent --version` and the agent CLI with no node on the PATH', () => {
    const dir = join(work, 'amd64', `cell-agent-${bundles.version}-linux-amd64`);
    const env = { PATH: noNodePath };
    expect(spawnSync('sh', ['-c', 'command -v node'], { env }).status).not.toBe(0);
    expect(execFileSync(join(dir, 'bin', 'cell-agent'), ['--version'], { env, encoding: 'utf8' })).toBe(`${bundles.version}\n`);
    const help = execFileSync(join(dir, 'bin', 'cell-agent'), ['serve', '--help'], { env, encoding: 'utf8' });
    expect(help).toContain('--state-dir');
    // A symlink to the entry point (how install.sh puts it on the PATH) finds the bundle too.
    symlinkSync(join(dir, 'bin', 'cell-agent'), join(noNodePath, 'cell-agent'));
    expect(execFileSync('cell-agent', ['--version'], { env, encoding: 'utf8' })).toBe(`${bundles.version}\n`);
    // The version is the agent package's: the one the bundle's file name carries.
    expect(JSON.parse(readFileSync(join(repoRoot, 'packages', 'cell-agent', 'package.json'), 'utf8')).version).toBe(bundles.version);
  });

  it('serves the agent API and answers its own ctl client over gRPC', async () => {
    const dir = join(work, 'amd64', `cell-agent-${bundles.version}-linux-amd64`);
    const state = join(work, 'state');
    const agent = spawn(join(dir, 'bin', 'cell-agent'), ['serve', '--listen', '127.0.0.1:0', '--state-dir', state, '--insecure-dev'], {
      env: { PATH: `${noNodePath}:/usr/sbin:/sbin` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    agent.stdout.on('data', (d: Buffer) => (out += d.toString()));
    let err = '';
    agent.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      const addr = await waitFor('the bundled agent to listen', () => /listening (\S+)/.exec(out)?.[1], { timeoutMs: 30_000 }).catch((e: Error) => {
        throw new Error(`${e.message}\nagent stderr:\n${err}`);
      });
      const status = execFileSync(join(dir, 'bin', 'cell-agent'), ['ctl', '--addr', addr, '--insecure-dev', 'status', '-o', 'json'], {
        env: { PATH: noNodePath },
        encoding: 'utf8',
      });
      expect(() => JSON.parse(status)).not.toThrow();
    } finally {
      agent.kill('SIGTERM');
      await waitExit(agent, { what: 'the agent' });
    }
  });

  it("loads node-pty's addon with the bundled Node and runs a real pty", () => {
    const dir = join(work, 'amd64', `cell-agent-${bundles.version}-linux-amd64`);
    const script = `
      const pty = require(${JSON.stringify(join(dir, 'lib', 'node_modules', 'node-pty'))});
      const t = pty.spawn('/bin/sh', ['-c', '[ -t 0 ] && [ -t 1 ] && echo on-a-tty; echo $((6*7))'], { cols: 80, rows: 24 });
      let out = '';
      t.onData((d) => (out += d));
      t.onExit(({ exitCode }) => { process.stdout.write(JSON.stringify({ out, exitCode })); });`;
    const r = JSON.parse(execFileSync(join(dir, 'lib', 'node'), ['-e', script], { env: { PATH: noNodePath }, encoding: 'utf8' })) as { out: string; exitCode: number };
    expect(r.exitCode).toBe(0);
    expect(r.out).toContain('on-a-tty');
    expect(r.out).toContain('42');
  });

  it('carries arm64 binaries (Node and the node-pty addon) in the arm64 bundle', () => {
    const arm = extract('arm64');
    const amd = join(work, 'amd64', `cell-agent-${bundles.version}-linux-amd64`);
    execFileSync('sha256sum', ['--quiet', '-c', 'SHA256SUMS'], { cwd: arm });
    expect(elfMachine(join(arm, 'lib', 'node'))).toBe(183);
    expect(elfMachine(join(arm, 'lib', 'node_modules', 'node-pty', 'build', 'Release', 'pty.node'))).toBe(183);
    expect(elfMachine(join(amd, 'lib', 'node'))).toBe(62);
    expect(elfMachine(join(amd, 'lib', 'node_modules', 'node-pty', 'build', 'Release', 'pty.node'))).toBe(62);
    // Same agent code in both; only the native parts differ.
    expect(readFileSync(join(arm, 'lib', 'cell-agent.js'))).toEqual(readFileSync(join(amd, 'lib', 'cell-agent.js')));
    expect(statSync(join(arm, 'bin', 'cell-agent')).mode & 0o111).toBe(0o111);
  });

  it('refuses a bad --arch naming the flag', () => {
    const r = spawnSync(process.execPath, [join(repoRoot, 'scripts', 'package', 'package-agent.mjs'), '--arch', 'sparc'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('--arch: expected amd64, arm64 or all, got "sparc"');
  });
});
