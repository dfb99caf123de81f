// The agent's view of cgroups. runc places each unit instance in a child cgroup of the unit's
// cgroup; the driver owns the unit's cgroup itself: it sets the limits there (so the memory
// limit is hit, and OOM kills are counted, in a cgroup that outlives each instance), reads its
// statistics, detects OOM kills and kills every process in it.
export interface UnitLimits {
  memoryBytes?: number | undefined;
  cpuMillis?: number | undefined; // limit (quota)
  cpuRequestMillis?: number | undefined; // weight
  pids?: number | undefined;
}

export interface CgroupStats {
  cpuUsageNanos: number;
  memoryUsageBytes: number;
  memoryLimitBytes: number | undefined;
  pids: number;
}

export interface CgroupDriver {
  readonly mode: 'v1' | 'v2';
  /** Creates the cgroup (and its parents) and applies the limits. Idempotent. */
  ensure(path: string, limits: UnitLimits): Promise<void>;
  /** How many processes the kernel's OOM killer has killed in this cgroup's memory limit. */
  oomKills(path: string): Promise<number>;
  /**
   * How often the cgroup's memory limit was hit (v1 memory.failcnt, v2 memory.events `max`).
   * On v1 the OOM kill of a process in a child cgroup is counted only in that child, which runc
   * removes when the instance ends; a SIGKILL the agent did not send, while the unit's limit
   * was being hit, is then the OOM kill.
   */
  limitHits(path: string): Promise<number>;
  stats(path: string): Promise<CgroupStats>;
  /** PIDs of every process in the cgroup and its descendants. */
  pids(path: string): Promise<number[]>;
  /** SIGKILLs every process in the cgroup tree until it is empty (or the deadline passes). */
  killAll(path: string, timeoutMs?: number): Promise<void>;
  /** Removes the cgroup tree (must be empty of processes). */
  remove(path: string): Promise<void>;
}

export const CPU_PERIOD_US = 100_000;

/** Kubernetes' conversion of CPU requests to cgroup v1 shares. */
export function milliCpuToShares(m: number): number {
  return Math.max(2, Math.min(262144, Math.floor((m * 1024) / 1000)));
}

/** The conversion runc and Kubernetes use from v1 shares to v2 weight. */
export function sharesToWeight(shares: number): number {
  return Math.floor(1 + ((shares - 2) * 9999) / 262142);
}
