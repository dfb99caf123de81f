// Re-adopting the log files an earlier agent process left in a unit's log directory.
import { readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { LogInstance } from './instance.js';
import type { LogLimits } from './options.js';

/**
 * The newest instance found is "current" (ended, readable), the one before it "previous".
 * Anything older is no longer reachable and is deleted.
 */
export function recoverInstances(dir: string, limits: LogLimits): { previous: LogInstance | undefined; current: LogInstance | undefined } {
  const byInstance = new Map<number, number[]>();
  for (const name of readdirSync(dir)) {
    const m = /^(\d+)-(\d+)\.log$/.exec(name);
    if (m === null) continue;
    const id = Number(m[1]);
    byInstance.set(id, [...(byInstance.get(id) ?? []), Number(m[2])]);
  }
  const ids = [...byInstance.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, -2)) {
    for (const seg of byInstance.get(id)!) unlinkSync(join(dir, `${id}-${seg}.log`));
  }
  const [prevId, curId] = ids.length >= 2 ? ids.slice(-2) : [undefined, ids[0]];
  return {
    previous: prevId === undefined ? undefined : recovered(prevId, dir, limits, byInstance.get(prevId)!),
    current: curId === undefined ? undefined : recovered(curId, dir, limits, byInstance.get(curId)!),
  };
}

/** An ended instance made of the segment files `segs` (their indexes) that are on disk. */
function recovered(id: number, dir: string, limits: LogLimits, segs: number[]): LogInstance {
  const inst = new LogInstance(id, dir, limits);
  for (const index of segs.sort((a, b) => a - b)) {
    const path = join(dir, `${id}-${index}.log`);
    const size = statSync(path).size;
    inst.segments.push({ index, path, start: inst.pos, size });
    inst.pos += size;
  }
  inst.ended = true;
  return inst;
}
