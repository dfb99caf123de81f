// One contract for every CgroupDriver. v1 runs against this host's real v1 hierarchies. v2 runs
// against a FAKE cgroupfs tree the test builds (this host's unified hierarchy has no memory,
// cpu or pids controllers, so v2 limits cannot be exercised for real here), plus the parts
// the real unified hierarchy supports: creating a cgroup, moving a process in, killing it all.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CgroupV1Driver } from '../src/cgroups/v1.js';
import { CgroupV2Driver } from '../src/cgroups/v2.js';
import type { CgroupDriver } from '../src/cgroups/driver.js';

interface Harness {
  driver: CgroupDriver;
  /** Reads a limit file back as the kernel (or the fake) shows it. */
  read(path: string, file: string): string;
  /** Simulates what the kernel would count (fake tree only). */
  simulateOom?(path: string): void;
  /** Puts a live process into the cgroup; returns its pid. */
  enter(path: string): Promise<number>;
  root: string;
}

function sleeper(): ReturnType<typeof spawn> {
  return spawn('sleep', ['60'], { stdio: 'ignore' });
}

const v1: () => Harness = () => {
  const root = '/sys/fs/cgroup';
  const ctrl: Record<string, string> = { 'memory.limit_in_bytes': 'memory', 'cpu.cfs_quota_us': 'cpu', 'cpu.shares': 'cpu', 'pids.max': 'pids' };
  return {
    root,
    driver: new CgroupV1Driver(root),
    read: (p, f) => readFileSync(join(root, ctrl[f]!, p, f), 'utf8').trim(),
    enter: async (p) => {
      const s = sleeper();
      for (const c of ['memory', 'cpu', 'cpuacct', 'pids']) writeFileSync(join(root, c, p, 'cgroup.procs'), String(s.pid));
      return s.pid!;
    },
  };
};

const v2fake: () => Harness = () => {
  const root = mkdtempSync(join(tmpdir(), 'fake-cgroup2-'));
  writeFileSync(join(root, 'cgroup.controllers'), 'cpu memory pids\n');
  return {
    root,
    driver: new CgroupV2Driver(root),
    read: (p, f) => readFileSync(join(root, p, f), 'utf8').trim(),
    simulateOom: (p) => writeFileSync(join(root, p, 'memory.events'), 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n'),
    enter: async (p) => {
      // A fake tree has no kernel to move processes: record the pid as the kernel would list it.
      const s = sleeper();
      writeFileSync(join(root, p, 'cgroup.procs'), `${s.pid}\n`);
      return s.pid!;
    },
  };
};

function contract(name: string, make: () => Harness, isReal: boolean): void {
  describe(`CgroupDriver contract: ${name}`, () => {
    const real = isReal;
    it('creates the cgroup and applies memory, cpu and pids limits', async () => {
      const h = make();
      const p = `/cello-contract/${Math.random().toString(36).slice(2, 8)}`;
      await h.driver.ensure(p, { memoryBytes: 64 * 1024 * 1024, cpuMillis: 500, cpuRequestMillis: 250, pids: 100 });
      if (h.driver.mode === 'v1') {
        expect(h.read(p, 'memory.limit_in_bytes')).toBe(String(64 * 1024 * 1024));
        expect(h.read(p, 'cpu.cfs_quota_us')).toBe('50000');
        expect(h.read(p, 'cpu.shares')).toBe('256');
        expect(h.read(p, 'pids.max')).toBe('100');
      } else {
        expect(h.read(p, 'memory.max')).toBe(String(64 * 1024 * 1024));
        expect(h.read(p, 'cpu.max')).toBe('50000 100000');
        expect(h.read(p, 'cpu.weight')).toBe('10');
        expect(h.read(p, 'pids.max')).toBe('100');
      }
      // Idempotent, and limits can be lifted.
      await h.driver.ensure(p, {});
      if (h.driver.mode === 'v1') expect(Number(h.read(p, 'memory.limit_in_bytes'))).toBeGreaterThan(2 ** 60);
      else expect(h.read(p, 'memory.max')).toBe('max');
      // (A fake tree holds regular files, which rmdir cannot remove as cgroupfs would.)
      if (real) await h.driver.remove(p);
    });

    it('lists and kills every process in the cgroup, then removes it', async () => {
      const h = make();
      const p = `/cello-contract/${Math.random().toString(36).slice(2, 8)}`;
      await h.driver.ensure(p, {});
      const pid = await h.enter(p);
      expect(await h.driver.pids(p)).toContain(pid);
      if (real) {
        await h.driver.killAll(p, 5000);
        expect(await h.driver.pids(p)).toEqual([]);
        await h.driver.remove(p);
        expect(existsSync(join(h.root, h.driver.mode === 'v1' ? 'memory' : '', p))).toBe(false);
      } else {
        process.kill(pid, 'SIGKILL');
      }
    });

    it('counts OOM kills and limit hits', async () => {
      const h = make();
      const p = `/cello-contract/${Math.random().toString(36).slice(2, 8)}`;
      await h.driver.ensure(p, { memoryBytes: 16 * 1024 * 1024 });
      expect(await h.driver.oomKills(p)).toBe(0);
      if (h.simulateOom) {
        h.simulateOom(p);
        expect(await h.driver.oomKills(p)).toBe(1);
        expect(await h.driver.limitHits(p)).toBe(3);
      } else {
        // Real v1: a process in the cgroup allocating past the limit gets OOM-killed.
        const before = await h.driver.limitHits(p);
        const s = spawn('sh', ['-c', 'read x; head -c 100000000 /dev/zero | tail'], { stdio: ['pipe', 'ignore', 'ignore'] });
        for (const c of ['memory', 'cpu', 'cpuacct', 'pids']) writeFileSync(join(h.root, c, p, 'cgroup.procs'), String(s.pid));
        s.stdin!.end('go\n');
        await new Promise((r) => s.on('exit', r));
        expect(await h.driver.oomKills(p)).toBeGreaterThanOrEqual(1);
        expect(await h.driver.limitHits(p)).toBeGreaterThan(before);
        await h.driver.killAll(p);
        await h.driver.remove(p);
      }
    });
  });
}

contract('v1 (real host hierarchies)', v1, true);
contract('v2 (fake cgroupfs tree made by the test)', v2fake, false);

describe('CgroupV2Driver: a unit without limits (fake cgroupfs tree made by the test)', () => {
  // On a real v2 host, a controller not enabled in the parent's subtree_control has no interface
  // files in the child, and writing one fails (EACCES): a unit with no limits must not try.
  it('writes no limit files it was not asked for, and resets ones it set before to max', async () => {
    const root = mkdtempSync(join(tmpdir(), 'fake-cgroup2-'));
    try {
      writeFileSync(join(root, 'cgroup.controllers'), 'cpu memory pids\n');
      const d = new CgroupV2Driver(root);
      await d.ensure('/cello/nolimits', {});
      for (const f of ['memory.max', 'cpu.max', 'pids.max']) expect(existsSync(join(root, 'cello/nolimits', f))).toBe(false);
      await d.ensure('/cello/was-limited', { memoryBytes: 64 << 20, pids: 50 });
      expect(readFileSync(join(root, 'cello/was-limited/memory.max'), 'utf8')).toBe(String(64 << 20));
      await d.ensure('/cello/was-limited', {});
      expect(readFileSync(join(root, 'cello/was-limited/memory.max'), 'utf8')).toBe('max');
      expect(readFileSync(join(root, 'cello/was-limited/pids.max'), 'utf8')).toBe('max');
      expect(existsSync(join(root, 'cello/was-limited/cpu.max'))).toBe(false);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('CgroupV2Driver on the real unified hierarchy (no controllers here)', () => {
  const root = '/sys/fs/cgroup/unified';
  it('creates a cgroup, kills its processes with cgroup.kill, removes it; refuses limits it cannot enforce', async () => {
    if (!existsSync(join(root, 'cgroup.controllers'))) throw new Error(`${root} is not a cgroup2 mount on this host`);
    const d = new CgroupV2Driver(root);
    const p = `/cello-contract/${Math.random().toString(36).slice(2, 8)}`;
    await d.ensure(p, {});
    const s = sleeper();
    writeFileSync(join(root, p, 'cgroup.procs'), String(s.pid));
    expect(await d.pids(p)).toEqual([s.pid]);
    await d.killAll(p);
    expect(await d.pids(p)).toEqual([]);
    await d.remove(p);
    expect(existsSync(join(root, p))).toBe(false);
    const controllers = readFileSync(join(root, 'cgroup.controllers'), 'utf8');
    if (!controllers.includes('memory')) await expect(d.ensure(p, { memoryBytes: 1 << 24 })).rejects.toThrow(/lacks the memory controller/);
  });
});
