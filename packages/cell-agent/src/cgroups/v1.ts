// cgroup v1: one hierarchy per controller under a common mount root (/sys/fs/cgroup/memory,
// /cpu, /cpuacct, /pids, ...). Limits go in memory.limit_in_bytes, cpu.cfs_quota_us,
// cpu.shares and pids.max; OOM kills are counted in memory.oom_control's `oom_kill`.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type CgroupDriver, type CgroupStats, type UnitLimits, CPU_PERIOD_US, milliCpuToShares } from './driver.js';
import { killTree, readNum, removeTree, treePids } from './common.js';

const CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids'] as const;
// An unlimited v1 memory limit reads back as this (PAGE_COUNTER_MAX pages, rounded).
const V1_UNLIMITED = 2 ** 62;

export class CgroupV1Driver implements CgroupDriver {
  readonly mode = 'v1' as const;
  constructor(private readonly root = '/sys/fs/cgroup') {}

  private dir(ctrl: string, path: string): string {
    return join(this.root, ctrl, path);
  }

  async ensure(path: string, limits: UnitLimits): Promise<void> {
    // Synchronous: cgroupfs writes never block on a disk, and this is on the path to a start.
    for (const c of CONTROLLERS) mkdirSync(this.dir(c, path), { recursive: true });
    const mem = this.dir('memory', path);
    const cpu = this.dir('cpu', path);
    writeFileSync(join(mem, 'memory.limit_in_bytes'), limits.memoryBytes !== undefined ? String(limits.memoryBytes) : '-1');
    writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
    writeFileSync(join(cpu, 'cpu.cfs_quota_us'), limits.cpuMillis !== undefined ? String(Math.max(1000, Math.floor((limits.cpuMillis * CPU_PERIOD_US) / 1000))) : '-1');
    if (limits.cpuRequestMillis !== undefined) writeFileSync(join(cpu, 'cpu.shares'), String(milliCpuToShares(limits.cpuRequestMillis)));
    writeFileSync(join(this.dir('pids', path), 'pids.max'), limits.pids !== undefined ? String(limits.pids) : 'max');
  }

  async oomKills(path: string): Promise<number> {
    try {
      const m = /oom_kill (\d+)/.exec(readFileSync(join(this.dir('memory', path), 'memory.oom_control'), 'utf8'));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  }

  async limitHits(path: string): Promise<number> {
    try {
      return Number(readFileSync(join(this.dir('memory', path), 'memory.failcnt'), 'utf8').trim());
    } catch {
      return 0;
    }
  }

  async stats(path: string): Promise<CgroupStats> {
    const lim = await readNum(join(this.dir('memory', path), 'memory.limit_in_bytes'));
    return {
      cpuUsageNanos: await readNum(join(this.dir('cpuacct', path), 'cpuacct.usage')),
      memoryUsageBytes: await readNum(join(this.dir('memory', path), 'memory.usage_in_bytes')),
      memoryLimitBytes: lim >= V1_UNLIMITED ? undefined : lim,
      pids: await readNum(join(this.dir('pids', path), 'pids.current')),
    };
  }

  pids(path: string): Promise<number[]> {
    // Every process is in every v1 hierarchy; pids is always mounted where runc runs.
    return treePids(this.dir('pids', path));
  }

  killAll(path: string, timeoutMs = 5000): Promise<void> {
    return killTree(this.dir('pids', path), timeoutMs);
  }

  async remove(path: string): Promise<void> {
    for (const c of CONTROLLERS) await removeTree(this.dir(c, path));
  }
}
