// The UnitDirectory contract: what the stream services (logs, exec, attach, port-forward, stats)
// may rely on from whatever runs the pod's units. Every implementation runs it: the agent's pod
// manager (the real one) and the stream tests' runc double, so the double the stream tests use
// is checked against the behaviour of the real thing.
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { waitFor } from '@cello/testkit';
import type { UnitDirectory, UnitStdio, UnitView } from '../../src/units/unit-view.js';

/** A unit of the pod under test: a busybox `sh -c script`. */
export interface ContractUnit {
  name: string;
  script: string;
  stdin?: boolean;
  tty?: boolean;
  memoryLimitBytes?: number;
}

export interface UnitDirectoryUnderTest {
  directory: UnitDirectory;
  /** Starts these units (one pod); resolves once every one of them is running. A unit that
   * exits with status 0 is not started again. */
  start(units: ContractUnit[]): Promise<void>;
  /** Kills the current instance of `name` (SIGKILL) and resolves once its next instance runs. */
  restart(name: string): Promise<void>;
  cleanup(): Promise<void>;
}

const sleeper: ContractUnit = { name: 'sleeper', script: 'echo started; exec sleep 3600', memoryLimitBytes: 64 * 1024 * 1024 };
// Answers each line on stdin; "quit" makes it exit 0.
const echo: ContractUnit = { name: 'echo', script: 'while read l; do echo "got $l"; [ "$l" = quit ] && exit 0; done; sleep 3600', stdin: true };
// A terminal: prints its size whenever it reads a line.
const term: ContractUnit = { name: 'term', script: 'while read l; do echo "size $(stty size)"; done', stdin: true, tty: true };

function runcState(u: UnitView): { status: string; pid: number } {
  const t = u.runc()!;
  return JSON.parse(execFileSync('runc', ['--root', t.root, 'state', t.id], { encoding: 'utf8' }));
}

/** Collects an attached unit's output and waits for text in it. */
class Output {
  text = '';
  ended = false;
  constructor(stdio: UnitStdio) {
    stdio.output.on('data', (d: Buffer) => (this.text += d.toString('latin1')));
    stdio.output.on('end', () => (this.ended = true));
    stdio.output.on('close', () => (this.ended = true));
  }
  async until(what: string | RegExp, timeoutMs = 15_000): Promise<void> {
    const has = () => (typeof what === 'string' ? this.text.includes(what) : what.test(this.text));
    await waitFor(`output ${String(what)} (have ${JSON.stringify(this.text.slice(-200))})`, () => (has() ? true : undefined), { timeoutMs, intervalMs: 20 });
  }
}

export function unitDirectoryContract(name: string, factory: () => Promise<UnitDirectoryUnderTest>): void {
  async function withUnits(units: ContractUnit[], f: (d: UnitDirectory, t: UnitDirectoryUnderTest) => Promise<void>): Promise<void> {
    const t = await factory();
    try {
      await t.start(units);
      await f(t.directory, t);
    } finally {
      await t.cleanup();
    }
  }

  describe.concurrent(`UnitDirectory contract: ${name}`, () => {
    it('finds units by name and lists every one', async () => {
      await withUnits([sleeper, echo], async (d) => {
        expect(d.get('sleeper')?.name).toBe('sleeper');
        expect(d.get('echo')?.name).toBe('echo');
        expect(d.get('nope')).toBeUndefined();
        expect(
          d
            .list()
            .map((u) => u.name)
            .sort(),
        ).toEqual(['echo', 'sleeper']);
      });
    });

    it('describes a running unit: its runc container, init pid, cgroup, start time, declared stdio and limits', async () => {
      await withUnits([sleeper, echo], async (d) => {
        const u = d.get('sleeper')!;
        expect(u.running()).toBe(true);
        const st = runcState(u);
        expect(st.status).toBe('running');
        expect(u.pid()).toBe(st.pid);
        // The stats collector reads the unit's cgroup: the init process lives in it.
        const cg = readFileSync(`/proc/${u.pid()}/cgroup`, 'utf8');
        expect(u.cgroupPath()).toMatch(/^\//);
        expect(cg).toContain(u.cgroupPath());
        expect(u.startedAt()).toBeInstanceOf(Date);
        expect(Date.now() - u.startedAt()!.getTime()).toBeLessThan(60_000);
        expect(u.restartCount()).toBe(0);
        expect(u.memoryLimitBytes()).toBe(64 * 1024 * 1024);
        expect([u.stdin, u.tty]).toEqual([false, false]);
        const e = d.get('echo')!;
        expect(e.memoryLimitBytes()).toBeUndefined();
        expect([e.stdin, e.tty]).toEqual([true, false]);
        // Port-forward dials into the pod's network namespace: the units' own.
        const netns = d.netnsPath();
        if (netns !== undefined) expect(statSync(`/proc/${u.pid()}/ns/net`).ino).toBe(statSync(netns).ino);
      });
    });

    it('attach: output from now on, stdin to the unit, and after the output ends the exit status; then nothing runs', async () => {
      await withUnits([echo], async (d) => {
        const u = d.get('echo')!;
        const stdio = u.attach()!;
        expect(stdio.stdin).toBeDefined();
        const out = new Output(stdio);
        stdio.stdin!.write('hello\n');
        await out.until('got hello\n');
        expect(out.text).not.toContain('started');
        stdio.stdin!.write('quit\n');
        await out.until('got quit\n');
        await waitFor('output ended', () => (out.ended ? true : undefined), { timeoutMs: 15_000, intervalMs: 20 });
        expect(await stdio.exited!()).toBe(0);
        await waitFor('unit not running', () => (u.running() ? undefined : true), { timeoutMs: 15_000, intervalMs: 20 });
        expect(u.runc()).toBeUndefined();
        expect(u.pid()).toBeUndefined();
        expect(u.startedAt()).toBeUndefined();
        expect(u.attach()).toBeUndefined();
        expect(d.get('echo')).toBe(u);
      });
    });

    it('a unit without stdin gets no stdin writer from attach', async () => {
      await withUnits([sleeper], async (d) => {
        const stdio = d.get('sleeper')!.attach()!;
        expect(stdio.stdin).toBeUndefined();
        stdio.output.destroy();
      });
    });

    it('a tty unit: attach writes to its terminal and resizes it', async () => {
      await withUnits([term], async (d) => {
        const u = d.get('term')!;
        expect([u.stdin, u.tty]).toEqual([true, true]);
        const stdio = u.attach()!;
        const out = new Output(stdio);
        stdio.resize(91, 27);
        // (A resize may land a moment after the call: ask until the terminal says so.)
        await waitFor(
          'size 27 91',
          () => {
            if (/size 27 91/.test(out.text)) return true;
            stdio.stdin!.write('\n');
            return undefined;
          },
          { timeoutMs: 15_000, intervalMs: 200 },
        );
        stdio.output.destroy();
      });
    });

    it('a killed instance ends its attach with the signal status, and the next instance is a new one', async () => {
      await withUnits([sleeper], async (d, t) => {
        const u = d.get('sleeper')!;
        const before = { pid: u.pid()!, startedAt: u.startedAt()!, restarts: u.restartCount() };
        const stdio = u.attach()!;
        const out = new Output(stdio);
        const exited = new Promise<number>((resolve) => stdio.output.on('end', () => resolve(stdio.exited!())));
        await t.restart('sleeper');
        expect(await exited).toBe(137);
        expect(out.ended).toBe(true);
        const v = d.get('sleeper')!;
        expect(v.running()).toBe(true);
        expect(v.restartCount()).toBe(before.restarts + 1);
        expect(v.pid()).not.toBe(before.pid);
        expect(runcState(v)).toMatchObject({ status: 'running', pid: v.pid() });
        expect(v.startedAt()!.getTime()).toBeGreaterThanOrEqual(before.startedAt.getTime());
        // The old attach ended with its instance: it may have seen that instance's greeting (if
        // it attached before the shell printed it), never the next one's.
        expect(out.text.split('started').length - 1).toBeLessThanOrEqual(1);
      });
    });
  });
}
