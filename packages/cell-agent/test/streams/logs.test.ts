import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { LogsRequest, LogStream, type LogChunk } from '@cello/proto/cell';
import { ContainerLogs, LogsError, TextRenderer, unpackLogChunk } from '../../src/logs/index.js';
import { RuncTestUnits } from './helpers/runc-units.js';
import { waitFor } from '@cello/testkit';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'cello-logs-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function collect(logs: ContainerLogs, req: Partial<LogsRequest>, signal = new AbortController().signal): Promise<LogChunk[]> {
  const out: LogChunk[] = [];
  for await (const c of logs.read(LogsRequest.fromPartial(req), signal)) out.push(c);
  return out;
}
// Either form (LogsRequest.packed or not).
const lines = (chunks: LogChunk[]) => chunks.flatMap((c) => unpackLogChunk(c).map((e) => e.line.toString()));

describe('ContainerLogs (real files)', () => {
  it('keeps stream, nanosecond timestamps, a partial last line and lines longer than any buffer', async () => {
    const logs = new ContainerLogs({ dir: tmp(), maxLineBytes: 1000 });
    const sink = logs.startInstance();
    const before = BigInt(Date.now() - 2) * 1_000_000n; // (Date.now() is truncated to the ms)
    sink.write('stdout', Buffer.from('one\ntw'));
    sink.write('stderr', Buffer.from('err line\n'));
    sink.write('stdout', Buffer.from('o\n'));
    const long = 'x'.repeat(2500);
    sink.write('stdout', Buffer.from(long.slice(0, 700)));
    sink.write('stdout', Buffer.from(long.slice(700) + '\nlast without newline'));
    sink.end();
    const chunks = await collect(logs, {});
    const entries = chunks.flatMap((c) => c.entries);
    expect(entries.map((e) => [e.stream, e.line.toString().slice(0, 5), e.line.length, e.partial])).toEqual([
      [LogStream.LOG_STREAM_STDOUT, 'one', 3, false],
      [LogStream.LOG_STREAM_STDERR, 'err l', 8, false],
      [LogStream.LOG_STREAM_STDOUT, 'two', 3, false],
      [LogStream.LOG_STREAM_STDOUT, 'xxxxx', 1000, true],
      [LogStream.LOG_STREAM_STDOUT, 'xxxxx', 1000, true],
      [LogStream.LOG_STREAM_STDOUT, 'xxxxx', 500, false],
      [LogStream.LOG_STREAM_STDOUT, 'last ', 20, true],
    ]);
    const ns = entries.map((e) => BigInt(e.timeSeconds) * 1_000_000_000n + BigInt(e.timeNanos));
    expect(ns[0]! >= before).toBe(true);
    for (let i = 1; i < ns.length; i++) expect(ns[i]! >= ns[i - 1]!).toBe(true);
    // Nanosecond precision really is there (not milliseconds padded with zeros).
    expect(entries.some((e) => e.timeNanos % 1_000_000 !== 0)).toBe(true);
    // The on-disk file is CRI format.
    const file = readFileSync(join(logsDir(logs), '0-0.log'), 'utf8').split('\n');
    expect(file[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F one$/);
    expect(file[1]).toMatch(/ stderr F err line$/);
    // timestamps=true renders text with the line joined from its partial pieces.
    const text = (await collect(logs, { timestamps: true })).map((c) => c.text.toString()).join('');
    expect(text.split('\n')[3]).toMatch(new RegExp(`^\\S+Z ${long}$`));
  });

  it('tails by lines and by bytes, and filters by since-time', async () => {
    const logs = new ContainerLogs({ dir: tmp(), maxFileBytes: 300 });
    const sink = logs.startInstance();
    for (let i = 0; i < 100; i++) sink.write('stdout', Buffer.from(`line ${i}\n`));
    expect(lines(await collect(logs, { tailLines: 3 }))).toEqual(['line 97', 'line 98', 'line 99']);
    expect(lines(await collect(logs, { tailLines: 0 }))).toEqual([]);
    // "line 99\n" is 8 bytes; 11 bytes = the last 3 bytes of "line 98\n" plus line 99.
    expect(lines(await collect(logs, { limitBytes: 11 }))).toEqual(['98', 'line 99']);
    const mid = new Date(Date.now() + 5);
    await new Promise((r) => setTimeout(r, 20));
    sink.write('stdout', Buffer.from('after\n'));
    expect(lines(await collect(logs, { sinceTime: mid }))).toEqual(['after']);
    await expect(collect(logs, { tailLines: -1 })).rejects.toThrow(/tail_lines/);
    // Rotation kept 5 files of ~300 bytes: the oldest lines are gone, the newest all there.
    const all = lines(await collect(logs, {}));
    expect(all.at(-1)).toBe('after');
    expect(all.length).toBeLessThan(100);
    expect(readdirSync(logsDir(logs)).length).toBe(5);
    sink.end();
  });

  it('follow is pushed, survives rotation, tells a slow reader what it missed, ends with the instance', async () => {
    const logs = new ContainerLogs({ dir: tmp(), maxFileBytes: 4096, maxFiles: 2, ringBytes: 1024 });
    const sink = logs.startInstance();
    sink.write('stdout', Buffer.from('first\n'));
    const ac = new AbortController();
    const it = logs.read(LogsRequest.fromPartial({ follow: true }), ac.signal)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(lines([first.value as LogChunk])).toEqual(['first']);
    // While the reader is not reading, write far more than the two kept files hold.
    for (let i = 0; i < 2000; i++) sink.write('stdout', Buffer.from(`n ${i} ${'.'.repeat(40)}\n`));
    const got: string[] = [];
    let dropped = 0;
    const reading = (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        dropped += r.value.droppedBytes;
        got.push(...lines([r.value]));
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    sink.write('stdout', Buffer.from('tail line\n'));
    sink.end();
    await reading; // the follow ended by itself because the instance ended
    expect(dropped).toBeGreaterThan(50_000);
    expect(got.at(-1)).toBe('tail line');
    // What it did get is in order and ends with the newest records.
    const nums = got.filter((l) => l.startsWith('n ')).map((l) => Number(l.split(' ')[1]));
    expect(nums.at(-1)).toBe(1999);
    for (let i = 1; i < nums.length; i++) expect(nums[i]).toBe(nums[i - 1]! + 1);
  });

  it.each([false, true])('a fast follower gets everything across many rotations without loss (packed %s)', async (packed) => {
    const logs = new ContainerLogs({ dir: tmp(), maxFileBytes: 2048, maxFiles: 2, ringBytes: 512 });
    const sink = logs.startInstance();
    const ac = new AbortController();
    const got: string[] = [];
    let dropped = 0;
    const reading = (async () => {
      for await (const c of logs.read(LogsRequest.fromPartial({ follow: true, packed }), ac.signal)) {
        dropped += c.droppedBytes;
        got.push(...lines([c]));
      }
    })();
    for (let i = 0; i < 500; i++) {
      sink.write('stdout', Buffer.from(`r${i}\n`));
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
    }
    sink.end();
    await reading;
    expect(dropped).toBe(0);
    expect(got).toEqual(Array.from({ length: 500 }, (_, i) => `r${i}`));
  });

  it("a follower gets a streaming writer's small pieces in fewer messages, and a lone line at once", async () => {
    const logs = new ContainerLogs({ dir: tmp() });
    const sink = logs.startInstance();
    const ac = new AbortController();
    const got: { at: number; bytes: number }[] = [];
    const reading = (async () => {
      for await (const c of logs.read(LogsRequest.fromPartial({ follow: true }), ac.signal)) {
        got.push({ at: performance.now(), bytes: unpackLogChunk(c).reduce((n, e) => n + e.line.length + 1, 0) });
      }
    })();
    // 300 pieces of a pipe page, each in its own loop turn, as a unit writing through 4 KiB
    // stdio buffers arrives when the agent keeps up with it: one message each, before lingering.
    const piece = Buffer.from(`${'p'.repeat(4095)}\n`);
    for (let i = 0; i < 300; i++) {
      sink.write('stdout', piece);
      await new Promise((r) => setImmediate(r));
    }
    await waitFor('all pieces followed', () => got.reduce((n, g) => n + g.bytes, 0) === 300 * 4096, { intervalMs: 5 });
    expect(got.length).toBeLessThan(60); // 150 without lingering, ~9 with it
    // After a pause, one short line is not held back for company.
    await new Promise((r) => setTimeout(r, 50));
    const before = got.length;
    const t0 = performance.now();
    sink.write('stdout', Buffer.from('alone\n'));
    await waitFor('the lone line', () => got.length > before, { intervalMs: 5 });
    expect(got[before]!.bytes).toBe(6);
    expect(got[before]!.at - t0).toBeLessThan(1); // under the linger: it went out without one
    sink.end();
    ac.abort();
    await reading;
  });

  it('serves the same lines, streams, times and text packed as entry by entry, from the ring and from files', async () => {
    // Small files and ring: the reads below come from rotated files, the current file and the ring.
    const logs = new ContainerLogs({ dir: tmp(), maxFileBytes: 4096, maxFiles: 4, ringBytes: 2048, maxLineBytes: 300 });
    const sink = logs.startInstance();
    // Followers from the start read what they can from the ring, where the capture prepared
    // the packed form; the requests after the writes read files and tails.
    const ac = new AbortController();
    const followed = [collect(logs, { follow: true }, ac.signal), collect(logs, { follow: true, packed: true }, ac.signal)];
    for (let i = 0; i < 60; i++) {
      // whole lines, a line held across writes, the other stream, a line longer than maxLineBytes
      sink.write('stdout', Buffer.from(`out ${i} a\nout ${i} b\nheld ${i} `));
      sink.write('stdout', Buffer.from(`continues\n`));
      sink.write('stderr', Buffer.from(`err ${i}\n`));
      if (i % 7 === 0) sink.write('stdout', Buffer.from(`${'L'.repeat(700)}\n`));
      if (i % 9 === 0) sink.write('stderr', Buffer.from(`\n`)); // an empty line
      if (i === 30) await new Promise((r) => setTimeout(r, 15));
      else await new Promise((r) => setImmediate(r));
    }
    sink.write('stdout', Buffer.from('no newline'));
    const mid = new Date(Date.now() - 5);
    sink.end();
    const key = (cs: LogChunk[]) => cs.flatMap((c) => unpackLogChunk(c)).map((e) => [e.stream, e.timeSeconds, e.timeNanos, e.line.toString(), e.partial]);
    const [fe, fp] = await Promise.all(followed);
    expect(fe!.reduce((n, c) => n + c.droppedBytes, 0)).toBe(0);
    expect(key(fp!)).toEqual(key(fe!));
    expect(key(fe!).length).toBe(60 * 4 + 9 * 3 + 7 + 1); // 700-byte lines are 3 records
    const requests: Partial<LogsRequest>[] = [
      {},
      { tailLines: 9 },
      { tailLines: 200 },
      { limitBytes: 123 },
      { limitBytes: 1000 },
      { sinceTime: mid },
      { sinceSeconds: 3600 },
      { timestamps: true, tailLines: 40 },
    ];
    for (const req of requests) {
      const entries = await collect(logs, req);
      const packed = await collect(logs, { ...req, packed: true });
      expect(packed.every((c) => c.entries.length === 0)).toBe(true);
      expect(key(packed), JSON.stringify(req)).toEqual(key(entries));
      expect(key(entries).length, JSON.stringify(req)).toBeGreaterThan(0);
      const text = (cs: LogChunk[]) => Buffer.concat(cs.map((c) => c.text)).toString();
      expect(text(packed)).toEqual(text(entries));
      // What a client prints from the packed text is what it prints from the entries.
      const plain = (cs: LogChunk[]) => {
        const r = new TextRenderer(false);
        return Buffer.concat(cs.map((c) => r.chunk(c))).toString();
      };
      expect(plain(packed)).toEqual(plain(entries));
    }
    expect(key(await collect(logs, { packed: true })).at(-1)).toEqual([LogStream.LOG_STREAM_STDOUT, expect.any(Number), expect.any(Number), 'no newline', true]);
  });

  it('keeps the previous instance readable, also for a new agent process on the same directory', async () => {
    const dir = tmp();
    const logs = new ContainerLogs({ dir });
    const s1 = logs.startInstance();
    s1.write('stdout', Buffer.from('run one\n'));
    s1.end();
    const s2 = logs.startInstance();
    s2.write('stdout', Buffer.from('run two\n'));
    expect(lines(await collect(logs, { previous: true }))).toEqual(['run one']);
    expect(lines(await collect(logs, {}))).toEqual(['run two']);
    s2.end();
    const s3 = logs.startInstance();
    s3.write('stdout', Buffer.from('run three\n'));
    expect(lines(await collect(logs, { previous: true }))).toEqual(['run two']);
    logs.close();
    const again = new ContainerLogs({ dir });
    expect(lines(await collect(again, {}))).toEqual(['run three']);
    expect(lines(await collect(again, { previous: true }))).toEqual(['run two']);
    expect(readdirSync(dir).sort()).toEqual(['1-0.log', '2-0.log']);
    // A reader of an instance whose files vanish under it (two restarts later) ends, not spins.
    const small = new ContainerLogs({ dir: tmp(), maxFileBytes: 1000 });
    const w = small.startInstance();
    for (let i = 0; i < 100; i++) w.write('stdout', Buffer.from(`old ${i}\n`));
    w.end();
    small.startInstance();
    const it = small.read(LogsRequest.fromPartial({ previous: true }), new AbortController().signal)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(lines([first.value as LogChunk])[0]).toBe('old 0');
    small.startInstance();
    small.startInstance(); // the instance being read is now deleted
    let missed = 0;
    for (let r = await it.next(); !r.done; r = await it.next()) missed += r.value.droppedBytes;
    expect(missed).toBeGreaterThan(2000); // told about the ~4 KB it could no longer read
    const fresh = new ContainerLogs({ dir: tmp() });
    await expect(collect(fresh, { previous: true })).rejects.toBeInstanceOf(LogsError);
  });
});

describe('ContainerLogs under a real runc unit', () => {
  const units = new RuncTestUnits({ netns: false });
  afterAll(() => units.cleanup());

  it('captures 100 MB of numbered lines from a fast writer: none lost, order kept, follower included', async () => {
    const N = 12_000_000; // seq 1..12e6 is ~ 97 MB
    const u = units.add({
      name: 'seq',
      args: ['sh', '-c', `seq 1 ${N}; printf 'no newline at end'`],
      logs: { maxFileBytes: 32 * 1024 * 1024, maxFiles: 8 },
    });
    const exited = (async () => {
      await u.start();
      return u.waitExit();
    })();
    await new Promise((r) => setTimeout(r, 20));
    // A follower started while the unit writes must also see every line.
    const ac = new AbortController();
    let next = 1;
    let bytes = 0;
    let dropped = 0;
    let last: { line: string; partial: boolean } | undefined;
    // Packed, as ctl reads it (the entry-by-entry form is checked against it above).
    for await (const c of u.logs.read(LogsRequest.fromPartial({ follow: true, packed: true }), ac.signal)) {
      dropped += c.droppedBytes;
      for (const e of unpackLogChunk(c)) {
        bytes += e.line.length + 1;
        if (e.partial) {
          last = { line: e.line.toString(), partial: true };
          continue;
        }
        const v = Number(e.line.toString('latin1'));
        if (v !== next) throw new Error(`expected line ${next}, got ${e.line.toString().slice(0, 40)}`);
        next += 1;
      }
    }
    expect(await exited).toBe(0);
    expect(dropped).toBe(0);
    expect(next - 1).toBe(N);
    expect(last).toEqual({ line: 'no newline at end', partial: true });
    expect(bytes).toBeGreaterThan(95_000_000);
  }, 120_000);
});

function logsDir(logs: ContainerLogs): string {
  return (logs as unknown as { dir: string }).dir;
}
