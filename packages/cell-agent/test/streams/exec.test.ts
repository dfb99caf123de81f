// Exec, attach and the audit log, through the real gRPC API against real runc containers.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListAuditRequest, type ListAuditResponse } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { RuncTestUnits } from './helpers/runc-units.js';
import { collectExec, resize, start, startStreamServer, stdin, stdinEof, type TestServer } from './helpers/grpc.js';

const units = new RuncTestUnits({ netns: false });
const auditDir = mkdtempSync(join(tmpdir(), 'cello-audit-'));
let srv: TestServer;

beforeAll(async () => {
  units.add({
    name: 'app',
    args: ['sleep', '100000'],
    env: ['FOO=bar baz'],
    cwd: '/tmp',
    user: { uid: 1000, gid: 1000, additionalGids: [2000] },
  });
  units.add({ name: 'chat', args: ['sh', '-c', 'while read l; do echo "got:$l"; done; echo bye; exit 7'], stdin: true });
  units.add({ name: 'stopped', args: ['true'] });
  units.add({ name: 'term', args: ['sh'], stdin: true, tty: true });
  await Promise.all([units.get('app')!.start(), units.get('chat')!.start(), units.get('term')!.start()]);
  srv = await startStreamServer({ units, logsFor: (n) => units.get(n)?.logs, auditDir, recordTranscripts: true });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  await units.cleanup();
  rmSync(auditDir, { recursive: true, force: true });
});

function exec(command: string[], opts: { tty?: boolean; stdin?: boolean; columns?: number; rows?: number; container?: string } = {}) {
  const call = srv.client.exec(new Metadata());
  call.write(
    start({ container: opts.container ?? 'app', command, tty: opts.tty ?? false, stdin: opts.stdin ?? false, size: { columns: opts.columns ?? 0, rows: opts.rows ?? 0 } }),
  );
  return call;
}

describe('Exec without a tty', () => {
  it('runs as the unit runs: user, groups, env and working directory; separate stdout/stderr; exit code', async () => {
    const r = await collectExec(exec(['sh', '-c', 'id; pwd; echo "$FOO"; echo oops >&2; exit 3']));
    expect(r.error).toBeUndefined();
    expect(r.stdout.toString()).toBe('uid=1000(user) gid=1000(user) groups=2000(extra)\n/tmp\nbar baz\n');
    expect(r.stderr.toString()).toBe('oops\n');
    expect(r.exit).toMatchObject({ exitCode: 3, signal: '' });
  });

  it('passes stdin through and delivers EOF', async () => {
    // 24 MB into a command that starts reading late: flow control holds the client back.
    const call = exec(['sh', '-c', 'sleep 0.5; md5sum; echo done'], { stdin: true });
    const payload = Buffer.alloc(24 << 20);
    for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE(i, i);
    for (let off = 0; off < payload.length; off += 64 * 1024) call.write(stdin(payload.subarray(off, off + 64 * 1024)));
    call.write(stdinEof());
    const r = await collectExec(call, 60_000);
    const md5 = (await import('node:crypto')).createHash('md5').update(payload).digest('hex');
    expect(r.stdout.toString().trim().split(/\s+/)).toEqual([md5, '-', 'done']);
    expect(r.exit?.exitCode).toBe(0);
  });

  it('reports death by a signal', async () => {
    const r = await collectExec(exec(['sh', '-c', 'kill -KILL $$']));
    expect(r.exit).toMatchObject({ exitCode: 137, signal: 'SIGKILL' });
  });

  it('runs 20 sessions at once', async () => {
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => collectExec(exec(['sh', '-c', `sleep 0.2; echo session-${i}`]), 60_000)));
    runs.forEach((r, i) => {
      expect(r.stdout.toString()).toBe(`session-${i}\n`);
      expect(r.exit?.exitCode).toBe(0);
    });
  }, 90_000);

  it("kills the exec'd process when the client goes away", async () => {
    const call = exec(['sleep', '4242']);
    call.on('error', () => {});
    const ps = async () => (await collectExec(exec(['ps', '-o', 'args']))).stdout.toString();
    await waitFor('sleep 4242 to run', async () => (await ps()).includes('sleep 4242'), { timeoutMs: 10_000 });
    call.cancel();
    await waitFor('sleep 4242 to be gone', async () => !(await ps()).includes('sleep 4242'), { timeoutMs: 10_000 });
    expect(units.get('app')!.running()).toBe(true);
  });
});

describe('Exec with a tty', () => {
  it('drives an interactive shell: size from the first frame, resize seen by stty, exit code', async () => {
    const call = exec(['sh'], { tty: true, stdin: true, columns: 100, rows: 30 });
    let text = '';
    call.on('data', (m) => {
      if (m.frame?.$case === 'stdout') text += m.frame.value.toString('latin1');
    });
    const result = collectExec(call);
    call.write(stdin('stty size\r'));
    await waitFor('stty size 30 100', () => text.includes('30 100'), { timeoutMs: 10_000 });
    call.write(resize(132, 43));
    call.write(stdin('stty size; tty\r'));
    await waitFor('stty size 43 132', () => text.includes('43 132'), { timeoutMs: 10_000 });
    expect(text).toMatch(/\/dev\/pts\/\d+/);
    // Raw bytes both ways: a non-UTF-8 byte comes back as itself.
    call.write(stdin("printf '\\377\\n'\r"));
    await waitFor('raw byte', () => text.includes('\xff'), { timeoutMs: 10_000 });
    call.write(stdin('exit 5\r'));
    const r = await result;
    expect(r.exit).toMatchObject({ exitCode: 5, signal: '' });
    expect(r.stderr.length).toBe(0);
  });
});

describe('Exec with a tty: the terminal has its size from the first instant', () => {
  it("a command that asks at once gets the size of the start frame, every time, as the unit's user, env and cwd", async () => {
    // runc alone sizes the console only after the command started: 0x0 about one time in four here.
    for (let i = 0; i < 12; i++) {
      const r = await collectExec(exec(['sh', '-c', 'stty size; echo "$FOO|$(pwd)|$(id -u)"'], { tty: true, columns: 101, rows: 31 }));
      const out = r.stdout.toString('latin1');
      // (runc's console may end a line with \r\r\n when the command writes before runc clears its onlcr.)
      expect(out, `run ${i}`).toMatch(/^31 101\r*\n/);
      expect(out).toContain('bar baz|/tmp|1000');
      expect(r.exit).toMatchObject({ exitCode: 0 });
    }
  });
});

describe('Exec errors are clean gRPC errors and leave the unit alone', () => {
  it('unknown unit, unit not running, missing command, bad first frame', async () => {
    const unknown = await collectExec(exec(['true'], { container: 'nope' }));
    expect(unknown.error?.code).toBe(status.NOT_FOUND);
    expect(unknown.error?.message).toMatch(/"nope" not found/);
    const stopped = await collectExec(exec(['true'], { container: 'stopped' }));
    expect(stopped.error?.code).toBe(status.FAILED_PRECONDITION);
    expect(stopped.error?.message).toMatch(/not running/);
    // A command that does not exist ends as in a shell: 127, runc's reason on the exit frame.
    const missing = await collectExec(exec(['no-such-program', 'x']));
    expect(missing.error).toBeUndefined();
    expect(missing.exit).toMatchObject({ exitCode: 127, signal: '' });
    expect(missing.exit?.message).toMatch(/no-such-program.*not found/);
    // One that exists but cannot be executed: 126.
    const notExecutable = await collectExec(exec(['/etc/passwd']));
    expect(notExecutable.error).toBeUndefined();
    expect(notExecutable.exit).toMatchObject({ exitCode: 126 });
    expect(notExecutable.exit?.message).toMatch(/permission denied/);
    const empty = await collectExec(exec([]));
    expect(empty.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(empty.error?.message).toMatch(/start\.command/);
    const bad = srv.client.exec();
    bad.write(stdin('x'));
    const r = await collectExec(bad);
    expect(r.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(r.error?.message).toMatch(/first frame must be start/);
    expect(units.get('app')!.running()).toBe(true);
  });
});

describe('Attach', () => {
  it("connects to the unit's own stdin and output, and detaching leaves it running", async () => {
    const call = srv.client.attach();
    call.write(start({ container: 'chat', stdin: true }));
    let text = '';
    call.on('data', (m) => {
      if (m.frame?.$case === 'stdout') text += m.frame.value.toString();
    });
    const result = collectExec(call);
    call.write(stdin('hello\n'));
    await waitFor('echo from the unit', () => text.includes('got:hello'), { timeoutMs: 10_000 });
    call.end(); // detach
    const r = await result;
    expect(r.exit?.message).toBe('detached');
    expect(units.get('chat')!.running()).toBe(true);
    // A second attach that closes the unit's stdin sees it finish.
    const again = srv.client.attach();
    again.write(start({ container: 'chat', stdin: true }));
    again.write(stdin('second\n'));
    again.write(stdinEof());
    const r2 = await collectExec(again);
    expect(r2.stdout.toString()).toBe('got:second\nbye\n');
    expect(r2.exit?.message).toMatch(/ended/);
    expect(r2.exit?.exitCode).toBe(7); // the unit's own exit code
  });
});

describe('Attach to a tty unit', () => {
  it("gets the unit's terminal: typed input, its size from the first frame and resizes", async () => {
    const call = srv.client.attach();
    call.write(start({ container: 'term', stdin: true, tty: true, size: { columns: 90, rows: 33 } }));
    let text = '';
    call.on('data', (m) => {
      if (m.frame?.$case === 'stdout') text += m.frame.value.toString('latin1');
    });
    const result = collectExec(call);
    call.write(stdin('stty size\r'));
    await waitFor('stty size 33 90', () => text.includes('33 90'), { timeoutMs: 10_000 });
    call.write(resize(100, 44));
    await new Promise((r) => setTimeout(r, 200));
    call.write(stdin('stty size\r'));
    await waitFor('stty size 44 100', () => text.includes('44 100'), { timeoutMs: 10_000 });
    call.end();
    expect((await result).exit?.message).toBe('detached');
    expect(units.get('term')!.running()).toBe(true);
  });
});

describe('Audit log', () => {
  it('records every session with command, tty, exit, bytes and transcript', async () => {
    const call = exec(['sh', '-c', 'cat; exit 9'], { stdin: true });
    call.write(stdin('audited input\n'));
    call.write(stdinEof());
    await collectExec(call);
    const res = await new Promise<ListAuditResponse>((resolve, reject) =>
      srv.client.listAudit(ListAuditRequest.fromPartial({ limit: 500, includeTranscript: true }), (e, r) => (e ? reject(e) : resolve(r))),
    );
    const rec = res.records[0]!;
    expect(rec).toMatchObject({ kind: 'exec', container: 'app', command: ['sh', '-c', 'cat; exit 9'], tty: false, stdin: true, bytesIn: 14, bytesOut: 14 });
    expect(rec.exit?.exitCode).toBe(9);
    expect(rec.transcript.toString()).toBe('audited input\naudited input\n');
    expect(rec.finishedAt!.getTime()).toBeGreaterThanOrEqual(rec.startedAt!.getTime());
    expect(rec.peer).toMatch(/127\.0\.0\.1/);
    // Earlier sessions are there too: the tty shell, the attaches, the 20 concurrent ones.
    expect(res.records.some((r) => r.tty && r.command[0] === 'sh' && r.exit?.exitCode === 5)).toBe(true);
    expect(res.records.filter((r) => r.kind === 'attach').length).toBe(3);
    expect(res.records.filter((r) => r.command[2]?.startsWith('sleep 0.2; echo session-')).length).toBe(20);
    // A command that could not start is on record as well.
    expect(res.records.some((r) => r.command[0] === 'no-such-program')).toBe(true);
  });
});
