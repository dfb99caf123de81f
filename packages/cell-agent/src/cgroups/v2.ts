// cgroup v2: one unified hierarchy. Limits go in memory.max, cpu.max, cpu.weight and
// pids.max, after enabling the controllers in the parents' cgroup.subtree_control; OOM kills
// are counted in memory.events' `oom_kill`. Killing uses cgroup.kill when the kernel has it.
import { existsSync } from 'node:fs';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type CgroupDriver, type CgroupStats, type UnitLimits, CPU_PERIOD_US, milliCpuToShares, sharesToWeight } from './driver.js';
import { killTree, readKeyed, readNum, removeTree, treePids } from './common.js';

export class CgroupV2Driver implements CgroupDriver {
  readonly mode = 'v2' as const;
  constructor(private readonly root = '/sys/fs/cgroup') {}

  private dir(path: string): string {
    return join(this.root, path);
  }

  private async available(): Promise<Set<string>> {
    try {
      return new Set((await readFile(join(this.root, 'cgroup.controllers'), 'utf8')).trim().split(/\s+/).filter(Boolean));
    } catch {
      return new Set();
    }
  }

  async ensure(path: string, limits: UnitLimits): Promise<void> {
    const want: string[] = [];
    if (limits.memoryBytes !== undefined) want.push('memory');
    if (limits.cpuMillis !== undefined || limits.cpuRequestMillis !== undefined) want.push('cpu');
    if (limits.pids !== undefined) want.push('pids');
    const avail = await this.available();
    const missing = want.filter((c) => !avail.has(c));
    if (missing.length > 0) {
      throw new Error(`cgroup v2 at ${this.root} lacks the ${missing.join(', ')} controller(s) needed for the unit's limits`);
    }
    // Enable the controllers on the way down, so the leaf gets the interface files.
    const parts = path.split('/').filter(Boolean);
    let cur = this.root;
    for (const p of parts) {
      if (want.length > 0) await writeFile(join(cur, 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' ')).catch(() => {});
      cur = join(cur, p);
      await mkdir(cur, { recursive: true });
    }
    const d = this.dir(path);
    // A limit the unit does not set is written as "max" only where the interface file exists:
    // a controller that is not enabled for this subtree has no file, and the default is max.
    const set = async (file: string, value: string, wanted: boolean) => {
      if (wanted || existsSync(join(d, file))) await writeFile(join(d, file), value);
    };
    if (avail.has('memory')) await set('memory.max', limits.memoryBytes !== undefined ? String(limits.memoryBytes) : 'max', want.includes('memory'));
    if (avail.has('cpu')) {
      const quota = limits.cpuMillis !== undefined ? String(Math.max(1000, Math.floor((limits.cpuMillis * CPU_PERIOD_US) / 1000))) : 'max';
      await set('cpu.max', `${quota} ${CPU_PERIOD_US}`, want.includes('cpu'));
      if (limits.cpuRequestMillis !== undefined) {
        await writeFile(join(d, 'cpu.weight'), String(sharesToWeight(milliCpuToShares(limits.cpuRequestMillis))));
      }
    }
    if (avail.has('pids')) await set('pids.max', limits.pids !== undefined ? String(limits.pids) : 'max', want.includes('pids'));
  }

  async oomKills(path: string): Promise<number> {
    try {
      return (await readKeyed(join(this.dir(path), 'memory.events'))).get('oom_kill') ?? 0;
    } catch {
      return 0;
    }
  }

  async limitHits(path: string): Promise<number> {
    try {
      return (await readKeyed(join(this.dir(path), 'memory.events'))).get('max') ?? 0;
    } catch {
      return 0;
    }
  }

  async stats(path: string): Promise<CgroupStats> {
    const d = this.dir(path);
    const cpu = await readKeyed(join(d, 'cpu.stat'));
    const opt = async (f: string) => {
      try {
        return await readNum(join(d, f));
      } catch {
        return undefined;
      }
    };
    const lim = await opt('memory.max');
    return {
      cpuUsageNanos: (cpu.get('usage_usec') ?? 0) * 1000,
      memoryUsageBytes: (await opt('memory.current')) ?? 0,
      memoryLimitBytes: lim === undefined || lim === Number.POSITIVE_INFINITY ? undefined : lim,
      pids: (await opt('pids.current')) ?? (await treePids(d)).length,
    };
  }

  pids(path: string): Promise<number[]> {
    return treePids(this.dir(path));
  }

  async killAll(path: string, timeoutMs = 5000): Promise<void> {
    const kill = join(this.dir(path), 'cgroup.kill');
    try {
      await access(kill);
      await writeFile(kill, '1');
    } catch {
      /* older kernel or fake tree: kill one by one below */
    }
    await killTree(this.dir(path), timeoutMs);
  }

  remove(path: string): Promise<void> {
    return removeTree(this.dir(path));
  }
}
