// What a run of the local provider may leave behind if its stop goes wrong: cells, mounts,
// network namespaces and processes under the cells' root. npm start takes a snapshot of the
// namespaces before it starts (ones from other tools are not ours to report) and checks after.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** The local provider's per-cell network namespaces (cello-*) that exist now. */
export function cellNetns() {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return (r.stdout ?? '').split('\n').map((l) => l.split(' ')[0]).filter((n) => /^cello-[0-9a-f]+$/.test(n));
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

/** Everything under `cellsRoot` still there, each as a phrase for the user. */
export function leftovers(cellsRoot, netnsBefore) {
  return [
    // .images is the cells' shared image cache, kept so the next start pulls nothing.
    ...(existsSync(cellsRoot) ? readdirSync(cellsRoot).filter((n) => n !== '.images') : []),
    ...readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(cellsRoot)),
    ...cellNetns().filter((n) => !netnsBefore.has(n)).map((n) => `network namespace ${n}`),
    ...processesUnder(cellsRoot).map((p) => `process ${p}`),
  ];
}
