// `cell-agent ctl logs | exec | port-forward` as real processes (the built CLI), one under a real
// pty, against the stream services serving real runc containers.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as pty from 'node-pty';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '@cello/testkit';
import { parseDuration, parsePortMapping } from '../../src/ctl/streams.js';
import { RuncTestUnits } from './helpers/runc-units.js';
import { startStreamServer, type TestServer } from './helpers/grpc.js';

const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
const units = new RuncTestUnits();
let srv: TestServer;

beforeAll(async () => {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: build first (npx turbo run build --filter=@cello/cell-agent...)`);
  units.add({
    name: 'app',
    args: ['sh', '-c', 'for i in 1 2 3 4 5; do echo "line $i"; done; sleep 0.3; echo "to stderr" >&2; httpd -p 8080 -h /www; exec sleep 100000'],
    files: { '/www/index.html': 'served through ctl\n' },
  });
  units.add({ name: 'short', args: ['sh', '-c', 'echo begin; sleep 1; echo end'] });
  await units.get('app')!.start();
  srv = await startStreamServer({ units, logsFor: (n) => units.get(n)?.logs });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  await units.cleanup();
});

function ctl(args: string[], input?: string, timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [cli, 'ctl', '--addr', `127.0.0.1:${srv.port}`, '--insecure-dev', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`ctl ${args.join(' ')} did not finish in ${timeoutMs} ms: ${stdout} ${stderr}`));
    }, timeoutMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    if (input !== undefined) p.stdin.end(input);
  });
}

describe('ctl logs', () => {
  it('prints, tails, timestamps, and follows until the unit ends', async () => {
    // (each ctl run is a fresh Node process: keep their number small)
    // (stdout and stderr are separate pipes, so the unit pauses before writing to stderr)
    await waitFor('app output', async () => (await ctl(['logs', 'app'])).stdout === 'line 1\nline 2\nline 3\nline 4\nline 5\nto stderr\n', { timeoutMs: 30_000, intervalMs: 200 });
    expect((await ctl(['logs', 'app', '--tail', '2'])).stdout).toBe('line 5\nto stderr\n');
    expect((await ctl(['logs', 'app', '--tail', '1', '--timestamps'])).stdout).toMatch(/^\d{4}-\d\d-\d\dT[\d:]+\.\d{9}Z to stderr\n$/);
    const bad = await ctl(['logs', 'nope']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/"nope" not found/);
    const short = units.get('short')!;
    await short.start();
    const followed = await ctl(['logs', 'short', '-f']);
    expect(followed.stdout).toBe('begin\nend\n');
    expect(followed.code).toBe(0);
  });
});

describe('ctl exec', () => {
  it('passes stdout, stderr and stdin, and exits with the remote exit code', async () => {
    const r = await ctl(['exec', 'app', '--', 'sh', '-c', 'echo out; echo err >&2; exit 4']);
    expect(r).toMatchObject({ code: 4, stdout: 'out\n', stderr: 'err\n' });
    const cat = await ctl(['exec', '-i', 'app', '--', 'sh', '-c', 'tr a-z A-Z'], 'piped input\n');
    expect(cat).toMatchObject({ code: 0, stdout: 'PIPED INPUT\n' });
    const missing = await ctl(['exec', 'app', '--', 'no-such-cmd']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/no-such-cmd.*not found/);
  });

  it('with -it on a real terminal: raw mode, window size and its changes, exit code', async () => {
    const term = pty.spawn(process.execPath, [cli, 'ctl', '--addr', `127.0.0.1:${srv.port}`, '--insecure-dev', 'exec', '-it', 'app', '--', 'sh'], {
      cols: 91,
      rows: 27,
      env: process.env as Record<string, string>,
    });
    let text = '';
    term.onData((d) => (text += d));
    const exited = new Promise<number>((resolve) => term.onExit(({ exitCode }) => resolve(exitCode)));
    try {
      await waitFor('a shell prompt', () => /[#$] /.test(text), { timeoutMs: 15_000 });
      term.write('stty size\r');
      await waitFor('stty size 27 91', () => text.includes('27 91'), { timeoutMs: 10_000 });
      term.resize(120, 40);
      await new Promise((r) => setTimeout(r, 300));
      term.write('stty size\r');
      await waitFor('stty size 40 120', () => text.includes('40 120'), { timeoutMs: 10_000 });
      // Raw mode: Ctrl-C goes to the remote shell (which survives it) instead of killing ctl.
      term.write('sleep 30\r');
      await new Promise((r) => setTimeout(r, 300));
      term.write('\x03');
      // (the terminal discards typed-ahead input on ^C, so wait for the prompt)
      await new Promise((r) => setTimeout(r, 500));
      term.write('echo still-$((40+2))\r');
      // (libuv's raw mode keeps ONLCR, so the local terminal shows \r\r\n: harmless)
      await waitFor('the shell after ^C', () => /\nstill-42\r/.test(text), { timeoutMs: 10_000 });
      term.write('exit 3\r');
      expect(await exited).toBe(3);
    } finally {
      term.kill();
    }
  });
});

describe('ctl port-forward', () => {
  it('listens locally and serves many connections at once', async () => {
    const p = spawn(process.execPath, [cli, 'ctl', '--addr', `127.0.0.1:${srv.port}`, '--insecure-dev', 'port-forward', ':8080'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      const port = await waitFor('Forwarding line', () => Number(/Forwarding from 127\.0\.0\.1:(\d+) -> 8080/.exec(out)?.[1]) || undefined, { timeoutMs: 15_000 });
      const bodies = await Promise.all(Array.from({ length: 10 }, () => fetch(`http://127.0.0.1:${port}/index.html`).then((r) => r.text())));
      expect(bodies).toEqual(Array(10).fill('served through ctl\n'));
    } finally {
      p.kill('SIGINT');
    }
  });

  it('parses mappings and durations, refusing bad ones by name', () => {
    expect(parsePortMapping('8080:80')).toEqual({ local: 8080, remote: 80 });
    expect(parsePortMapping(':80')).toEqual({ local: 0, remote: 80 });
    expect(parsePortMapping('5432')).toEqual({ local: 5432, remote: 5432 });
    expect(() => parsePortMapping('80:99999')).toThrow(/LOCAL:REMOTE/);
    expect(parseDuration('1h30m')).toBe(5400);
    expect(() => parseDuration('10 minutes')).toThrow(/--since/);
  });
});
