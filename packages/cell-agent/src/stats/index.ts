// Stats for the cell and its units: cumulative figures from cgroups and /proc, plus current CPU
// rates computed from the previous sample (taking a short second sample when there is none, so
// the first answer already has a rate).
import { readFile, statfs } from 'node:fs/promises';
import { cpus } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { CellStats, FilesystemStats, InterfaceStats, StatsResponse, UnitStats } from '@cello/proto/cell';
import type { UnitDirectory } from '../units/unit-view.js';
import { CgroupStatsReader, type CgroupRoots, detectCgroupRoots } from './cgroup.js';

export { CgroupStatsReader, detectCgroupRoots, cgroupMode, type CgroupRoots, type CgroupSample } from './cgroup.js';

const USER_HZ = 100; // /proc/stat ticks; fixed at 100 on Linux for userspace

interface Sample {
  at: bigint;
  cpu: number;
}

export interface StatsOptions {
  units: UnitDirectory;
  /** Filesystems reported for the cell (e.g. the state dir and /). */
  filesystems?: string[];
  cgroupRoots?: CgroupRoots;
  procRoot?: string;
}

export class StatsCollector {
  private readonly cgroups: CgroupStatsReader;
  private readonly last = new Map<string, Sample>();
  private readonly proc: string;

  constructor(private readonly opts: StatsOptions) {
    this.cgroups = new CgroupStatsReader(opts.cgroupRoots ?? detectCgroupRoots());
    this.proc = opts.procRoot ?? '/proc';
  }

  async collect(): Promise<StatsResponse> {
    const first = await this.sampleAll();
    // With no earlier sample there is no rate yet: take a second one shortly after.
    if (first.needSecond) {
      await sleep(100);
      return (await this.sampleAll()).response;
    }
    return first.response;
  }

  private rate(key: string, cpuNanos: number): { cores: number; fresh: boolean } {
    const now = process.hrtime.bigint();
    const prev = this.last.get(key);
    this.last.set(key, { at: now, cpu: cpuNanos });
    if (prev === undefined || cpuNanos < prev.cpu) return { cores: 0, fresh: true };
    const dt = Number(now - prev.at);
    return { cores: dt > 0 ? (cpuNanos - prev.cpu) / dt : 0, fresh: false };
  }

  private async sampleAll(): Promise<{ response: StatsResponse; needSecond: boolean }> {
    let needSecond = false;
    const units: UnitStats[] = [];
    for (const u of this.opts.units.list()) {
      const s = u.running() ? await this.cgroups.read(u.cgroupPath()) : undefined;
      let cores = 0;
      if (s !== undefined) {
        const r = this.rate(`unit:${u.name}:${u.startedAt()?.getTime() ?? 0}`, s.cpuUsageNanos);
        cores = r.cores;
        needSecond ||= r.fresh;
      }
      units.push(
        UnitStats.fromPartial({
          name: u.name,
          cpuUsageNanos: s?.cpuUsageNanos ?? 0,
          cpuCores: cores,
          memoryUsageBytes: s?.memoryUsageBytes ?? 0,
          memoryWorkingSetBytes: s?.memoryWorkingSetBytes ?? 0,
          memoryRssBytes: s?.memoryRssBytes ?? 0,
          memoryLimitBytes: s?.memoryLimitBytes || u.memoryLimitBytes() || 0,
          pids: s?.pids ?? 0,
          restarts: u.restartCount(),
          startTime: u.startedAt(),
        }),
      );
    }
    const cell = await this.cell();
    const r = this.rate('cell', cell.cpuUsageNanos);
    cell.cpuCores = r.cores;
    needSecond ||= r.fresh;
    return { response: StatsResponse.fromPartial({ time: new Date(), cell, units }), needSecond };
  }

  private async cell(): Promise<CellStats> {
    const stat = await readFile(`${this.proc}/stat`, 'utf8');
    const cpuLine = stat.split('\n').find((l) => l.startsWith('cpu '))!;
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    const f = cpuLine.trim().split(/\s+/).slice(1).map(Number);
    const busyTicks = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    const mem = new Map<string, number>();
    for (const line of (await readFile(`${this.proc}/meminfo`, 'utf8')).split('\n')) {
      const m = /^(\w+):\s+(\d+)/.exec(line);
      if (m) mem.set(m[1]!, Number(m[2]) * 1024);
    }
    const total = mem.get('MemTotal') ?? 0;
    const available = mem.get('MemAvailable') ?? mem.get('MemFree') ?? 0;
    const filesystems: FilesystemStats[] = [];
    for (const path of this.opts.filesystems ?? ['/']) {
      try {
        const s = await statfs(path);
        filesystems.push(
          FilesystemStats.fromPartial({
            path,
            capacityBytes: s.blocks * s.bsize,
            usedBytes: (s.blocks - s.bfree) * s.bsize,
            availableBytes: s.bavail * s.bsize,
            inodes: s.files,
            inodesFree: s.ffree,
          }),
        );
      } catch {
        /* not mounted (any more) */
      }
    }
    return CellStats.fromPartial({
      cpuUsageNanos: Math.round((busyTicks * 1e9) / USER_HZ),
      cpuCount: cpus().length,
      memoryTotalBytes: total,
      memoryAvailableBytes: available,
      memoryUsedBytes: total - available,
      filesystems,
      interfaces: parseNetDev(await readFile(`${this.proc}/net/dev`, 'utf8')),
    });
  }
}

export function parseNetDev(text: string): InterfaceStats[] {
  const out: InterfaceStats[] = [];
  for (const line of text.split('\n').slice(2)) {
    const m = /^\s*([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const v = m[2]!.trim().split(/\s+/).map(Number);
    // rx: bytes packets errs drop fifo frame compressed multicast | tx: bytes packets errs ...
    out.push(
      InterfaceStats.fromPartial({
        name: m[1]!.trim(),
        rxBytes: v[0] ?? 0,
        rxPackets: v[1] ?? 0,
        rxErrors: v[2] ?? 0,
        txBytes: v[8] ?? 0,
        txPackets: v[9] ?? 0,
        txErrors: v[10] ?? 0,
      }),
    );
  }
  return out;
}
