// Garbage collection of cell instances. The controller ID tag is the ground truth of
// ownership, so this works whatever happened to the store: an instance of this controller
// whose cell the store does not know (or that is a duplicate of a cell's recorded instance)
// is terminated; instances of other controllers are never touched.
import type { CellProvider, InstanceInfo } from '../provider.js';
import { TAGS } from './config.js';

export interface CollectOptions {
  provider: CellProvider;
  controllerId: string;
  /** Cell ID → the instance the store recorded for it (undefined while still launching). */
  knownCells: Map<string, string | undefined>;
  /**
   * Instances younger than this are left alone: a launch whose cell record is being written
   * right now must not be collected. Default 2 minutes.
   */
  minAgeMs?: number;
  now?: Date;
  /** Report only. */
  dryRun?: boolean;
}

export interface CollectResult {
  terminated: Array<{ instanceId: string; cellId?: string; reason: 'unknown-cell' | 'duplicate' | 'untagged-cell' }>;
  kept: number;
  tooYoung: number;
}

export async function collectOrphans(o: CollectOptions): Promise<CollectResult> {
  const owned = await o.provider.listOwned(o.controllerId);
  const now = (o.now ?? new Date()).getTime();
  const minAge = o.minAgeMs ?? 120_000;
  const res: CollectResult = { terminated: [], kept: 0, tooYoung: 0 };
  const doomed: InstanceInfo[] = [];
  for (const i of owned) {
    // listOwned filters by tag already; this check makes the rule local and explicit.
    if (i.tags[TAGS.controllerId] !== o.controllerId) continue;
    if (i.state === 'terminated' || i.state === 'shutting-down') continue;
    const cellId = i.tags[TAGS.cellId];
    let reason: CollectResult['terminated'][number]['reason'] | undefined;
    if (!cellId) reason = 'untagged-cell';
    else if (!o.knownCells.has(cellId)) reason = 'unknown-cell';
    else {
      const recorded = o.knownCells.get(cellId);
      if (recorded !== undefined && recorded !== i.instanceId) reason = 'duplicate';
    }
    if (!reason) {
      res.kept++;
      continue;
    }
    if (i.launchedAt && now - i.launchedAt.getTime() < minAge) {
      res.tooYoung++;
      continue;
    }
    doomed.push(i);
    res.terminated.push({ instanceId: i.instanceId, ...(cellId ? { cellId } : {}), reason });
  }
  if (!o.dryRun && doomed.length > 0) await o.provider.terminate(doomed.map((i) => i.instanceId));
  return res;
}
