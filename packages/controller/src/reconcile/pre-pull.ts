// Pre-pulled warm cells: a Ready warm cell pulls, before any pod asks, the images a pod is most
// likely to bring — its warm-pool entry's configured ones, then the most frequent images of the
// last pods placed on its instance type — through the agent's PullImage, into the cache the pod
// will use. When a pod lands on a warm cell, each of its images is a hit (pre-pulled there) or a
// miss, in cello_prepull_images_total and in the pod's events.
import { PullImageRequest, type PullImageResponse } from '@cello/proto/cell';
import type { Cell } from '@cello/proto/controller';
import { callUnary } from '../agents/pool.js';
import { CellState } from '../cells/state.js';
import { splitKey } from '../cells/schema.js';
import { errMsg } from '../util/errors.js';
import type { ReconcileContext, WarmPoolEntry } from './context.js';

/** A pull of a large image on a slow link may take minutes; a stuck one must not hold the cell's list forever. */
const PULL_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_RECENT_PODS = 20;
export const DEFAULT_RECENT_IMAGES = 3;

export class PrePull {
  /** Per instance type, the images of its last pods (newest last), at most recentPods of them. */
  private readonly recent = new Map<string, string[][]>();

  /** A pod was placed on a cell of this type: its images count towards what warm cells of the type pull. */
  recordPod(warmPool: readonly WarmPoolEntry[], instanceType: string, images: string[]): void {
    const n = Math.max(0, ...warmPool.filter((w) => w.instanceType === instanceType).map((w) => w.recentPods ?? DEFAULT_RECENT_PODS));
    if (n === 0) return;
    const list = this.recent.get(instanceType) ?? [];
    list.push([...new Set(images)]);
    if (list.length > n) list.splice(0, list.length - n);
    this.recent.set(instanceType, list);
  }

  /** What a warm cell of this entry pulls: the configured images, then the most frequent recent ones. */
  imagesFor(entry: WarmPoolEntry): string[] {
    const out = [...new Set(entry.prePull ?? [])];
    const k = entry.recentImages ?? DEFAULT_RECENT_IMAGES;
    const pods = (this.recent.get(entry.instanceType) ?? []).slice(-(entry.recentPods ?? DEFAULT_RECENT_PODS));
    const count = new Map<string, { n: number; last: number }>();
    pods.forEach((images, i) => {
      for (const image of images) count.set(image, { n: (count.get(image)?.n ?? 0) + 1, last: i });
    });
    // Most pods first; among equals, the one used most recently.
    const ranked = [...count].sort((a, b) => b[1].n - a[1].n || b[1].last - a[1].last).map(([image]) => image);
    for (const image of ranked.filter((i) => !out.includes(i)).slice(0, k)) out.push(image);
    return out;
  }

  /**
   * Pulls on a warm cell that just became Ready, one image at a time (the cell is small, and
   * the first image is the likeliest), stopping when the cell is taken or goes away. What was
   * pulled is written into the cell's record for the hit count.
   */
  async run(ctx: ReconcileContext, cellId: string, address: string): Promise<void> {
    const cell = ctx.cache.cells.get(cellId)?.cell;
    if (!cell) return;
    const entry =
      (ctx.o.warmPool ?? []).find((w) => w.instanceType === cell.instanceType && !!w.spot === cell.spot) ??
      (ctx.o.warmPool ?? []).find((w) => w.instanceType === cell.instanceType);
    if (!entry) return;
    const images = this.imagesFor(entry);
    if (images.length === 0) return;
    const client = ctx.o.agents.get(cellId, address);
    for (const image of images) {
      const now = ctx.cache.cells.get(cellId)?.cell;
      if (!now || now.state !== CellState.CELL_STATE_READY || now.pod?.name) return;
      try {
        const r = await callUnary<PullImageResponse>(client, 'pullImage', PullImageRequest.fromPartial({ image }), PULL_TIMEOUT_MS);
        ctx.metrics.prePulls.inc({ outcome: r.cached ? 'cached' : 'pulled' });
        ctx.log.info({ cell: cellId, image, digest: r.digest, cached: r.cached, bytes: r.downloadedBytes, seconds: r.seconds }, 'pre-pulled');
        await ctx.cache.writeCell(cellId, (rec) => (rec ? { ...rec, prePulled: [...new Set([...(rec.prePulled ?? []), image])] } : undefined));
      } catch (err) {
        ctx.metrics.prePulls.inc({ outcome: 'failed' });
        ctx.log.warn({ cell: cellId, image, err: errMsg(err) }, 'pre-pull failed');
      }
    }
  }

  /** A pod was bound to warm cell `cell`: a hit or a miss for each of its images, counted and told in its events. */
  landed(ctx: ReconcileContext, podKey: string, cell: Cell, images: string[]): void {
    const pulled = new Set(ctx.cache.cells.get(cell.id)?.rec.prePulled ?? []);
    const hits = [...new Set(images)].filter((i) => pulled.has(i));
    const misses = [...new Set(images)].filter((i) => !pulled.has(i));
    if (hits.length) ctx.metrics.prePullImages.inc({ result: 'hit' }, hits.length);
    if (misses.length) ctx.metrics.prePullImages.inc({ result: 'miss' }, misses.length);
    const [namespace, name] = splitKey(podKey);
    const parts = [hits.length ? `pre-pulled: ${hits.join(', ')}` : '', misses.length ? `not pre-pulled: ${misses.join(', ')}` : ''].filter(Boolean);
    void ctx.note({ kind: 'Pod', namespace, name, reason: hits.length ? 'PrePulled' : 'NotPrePulled', message: `warm cell ${cell.id}: ${parts.join('; ')}` });
  }
}
