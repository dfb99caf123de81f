// What a run of the local provider may leave behind if its stop goes wrong: cells, mounts,
// network namespaces and processes under the cells' root. Only this run's namespaces count:
// the cells it launched are named in its controller's log, and each cell's namespace follows
// from its ID (LocalProvider.netnsOf).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** The local provider's per-cell network namespaces (cello-*) that exist now. */
export function cellNetns() {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => /^cello-[0-9a-f]+$/.test(n));
}

/** The cell IDs a controller log names (every launch, boot and end logs its `cell`). */
export function cellsInLog(logPath) {
  if (!existsSync(logPath)) return new Set();
  return new Set([...readFileSync(logPath, 'utf8').matchAll(/"cell":"(cell-[0-9a-f]+)"/g)].map((m) => m[1]));
}

/** PIDs of processes whose command line names a path under `dir` (cell agents, their units). */
function processesUnder(dir) {
  const out = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) out.push(pid);
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/**
 * Everything of this run still there, each as a phrase for the user. `netnsOfRun` names the
 * namespaces of the cells this run launched: others may come and go (tests, another checkout).
 */
export function leftovers(cellsRoot, netnsOfRun) {
  return [
    // .images is the cells' shared image cache, kept so the next start pulls nothing.
    ...(existsSync(cellsRoot) ? readdirSync(cellsRoot).filter((n) => n !== '.images') : []),
    ...readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => l.includes(cellsRoot)),
    ...cellNetns()
      .filter((n) => netnsOfRun.has(n))
      .map((n) => `network namespace ${n}`),
    ...processesUnder(cellsRoot).map((p) => `process ${p}`),
  ];
}
