// Per-unit resource usage from cgroups. A unit's figures come from cgroup v1 controllers where
// the host mounts them, and from the unified (v2) hierarchy otherwise. Hosts differ: pure v1,
// pure v2 (/sys/fs/cgroup is cgroup2), or hybrid like ours (v1 controllers plus a cgroup2 at
// /sys/fs/cgroup/unified that has no memory or cpu controller), so each figure is looked up
// where it actually lives rather than by one global mode.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface CgroupSample {
  cpuUsageNanos: number;
  memoryUsageBytes: number;
  /** usage minus inactive file cache: what the kernel cannot easily reclaim (kubelet's figure). */
  memoryWorkingSetBytes: number;
  memoryRssBytes: number;
  /** 0 when unlimited. */
  memoryLimitBytes: number;
  pids: number;
}

export interface CgroupRoots {
  /** Directory holding v1 controller mounts (cpuacct, memory, pids), if any. */
  v1?: string;
  /** Mount point of the cgroup2 hierarchy, if any. */
  v2?: string;
}

export function detectCgroupRoots(base = '/sys/fs/cgroup'): CgroupRoots {
  const roots: CgroupRoots = {};
  if (existsSync(join(base, 'memory')) || existsSync(join(base, 'cpuacct'))) roots.v1 = base;
  if (existsSync(join(base, 'cgroup.controllers'))) roots.v2 = base;
  else if (existsSync(join(base, 'unified', 'cgroup.controllers'))) roots.v2 = join(base, 'unified');
  return roots;
}

export function cgroupMode(roots: CgroupRoots): 'v1' | 'v2' | 'hybrid' | 'none' {
  if (roots.v1 && roots.v2) return roots.v2 === roots.v1 ? 'v2' : 'hybrid';
  return roots.v1 ? 'v1' : roots.v2 ? 'v2' : 'none';
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

async function readNumber(path: string): Promise<number | undefined> {
  const t = await readText(path);
  if (t === undefined) return undefined;
  const v = t.trim();
  if (v === 'max') return Infinity;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

function parseKeyed(text: string | undefined): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of (text ?? '').split('\n')) {
    const [k, v] = line.split(' ');
    if (k && v !== undefined) m.set(k, Number(v));
  }
  return m;
}

// v1 reports "no limit" as a huge page-aligned number (2^63 rounded down to a page).
const V1_UNLIMITED = 2 ** 62;

export class CgroupStatsReader {
  constructor(private readonly roots: CgroupRoots = detectCgroupRoots()) {}

  /** Figures for the cgroup at `path` (relative to each hierarchy), undefined if it has none. */
  async read(path: string): Promise<CgroupSample | undefined> {
    const { v1, v2 } = this.roots;
    const v1dir = (ctrl: string) => (v1 ? join(v1, ctrl, path) : undefined);
    const v2dir = v2 ? join(v2, path) : undefined;
    let found = false;

    let cpu: number | undefined;
    const cpuacct = v1dir('cpuacct');
    if (cpuacct && existsSync(cpuacct)) cpu = await readNumber(join(cpuacct, 'cpuacct.usage'));
    if (cpu === undefined && v2dir) {
      const st = parseKeyed(await readText(join(v2dir, 'cpu.stat')));
      const usec = st.get('usage_usec');
      if (usec !== undefined) cpu = usec * 1000;
    }
    found ||= cpu !== undefined;

    let usage: number | undefined;
    let workingSet = 0;
    let rss = 0;
    let limit = 0;
    const mem1 = v1dir('memory');
    if (mem1 && existsSync(join(mem1, 'memory.usage_in_bytes'))) {
      usage = await readNumber(join(mem1, 'memory.usage_in_bytes'));
      const st = parseKeyed(await readText(join(mem1, 'memory.stat')));
      const inactive = st.get('total_inactive_file') ?? st.get('inactive_file') ?? 0;
      workingSet = Math.max(0, (usage ?? 0) - inactive);
      rss = st.get('total_rss') ?? st.get('rss') ?? 0;
      const l = await readNumber(join(mem1, 'memory.limit_in_bytes'));
      limit = l === undefined || l >= V1_UNLIMITED ? 0 : l;
    } else if (v2dir && existsSync(join(v2dir, 'memory.current'))) {
      usage = await readNumber(join(v2dir, 'memory.current'));
      const st = parseKeyed(await readText(join(v2dir, 'memory.stat')));
      workingSet = Math.max(0, (usage ?? 0) - (st.get('inactive_file') ?? 0));
      rss = st.get('anon') ?? 0;
      const l = await readNumber(join(v2dir, 'memory.max'));
      limit = l === undefined || l === Infinity ? 0 : l;
    }
    found ||= usage !== undefined;

    let pids: number | undefined;
    const p1 = v1dir('pids');
    if (p1 && existsSync(join(p1, 'pids.current'))) pids = await readNumber(join(p1, 'pids.current'));
    else if (v2dir) pids = await readNumber(join(v2dir, 'pids.current'));
    if (pids === undefined && v2dir) {
      // No pids controller: count the processes.
      const procs = await readText(join(v2dir, 'cgroup.procs'));
      if (procs !== undefined) pids = procs.split('\n').filter(Boolean).length;
    }
    found ||= pids !== undefined;

    if (!found) return undefined;
    return {
      cpuUsageNanos: cpu ?? 0,
      memoryUsageBytes: usage ?? 0,
      memoryWorkingSetBytes: workingSet,
      memoryRssBytes: rss,
      memoryLimitBytes: limit,
      pids: pids ?? 0,
    };
  }
}
