// Watches instance metadata for the notices that mean "this instance is going away": a spot
// interruption (two minutes' warning), a rebalance recommendation (elevated risk of one) and
// scheduled maintenance. Each distinct notice is reported once; the agent forwards it on
// WatchStatus so the controller can move the pod to a new cell before the instance ends.
import { CellNotice, CellNoticeKind } from '@cello/proto/cell';
import type { GceMetadataClient } from './gce-metadata.js';
import type { ImdsClient } from './imds.js';

export interface NoticeWatcher {
  /** Resolves when the watcher has stopped. */
  stop(): Promise<void>;
  /** Notices seen so far (each once). */
  readonly seen: CellNotice[];
}

export interface WatchOptions {
  /** EC2: IMDSv2. Exactly one of imds and gce. */
  imds?: ImdsClient;
  /** GCE: the metadata server (instance/preempted, instance/maintenance-event). */
  gce?: GceMetadataClient;
  onNotice: (n: CellNotice) => void;
  /** AWS recommends polling every 5 s: the interruption notice gives two minutes. */
  intervalMs?: number;
  onError?: (err: unknown) => void;
}

function parseDate(v: unknown): Date | undefined {
  if (typeof v !== 'string') return undefined;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : new Date(t);
}

/** One poll of every notice path; returns the notices found (deduplication is the watcher's). */
export async function readNotices(imds: ImdsClient, now = new Date()): Promise<CellNotice[]> {
  const out: CellNotice[] = [];
  const spot = await imds.get('/latest/meta-data/spot/instance-action');
  if (spot) {
    const v = JSON.parse(spot) as { action?: string; time?: string };
    const actionAt = parseDate(v.time);
    out.push(
      CellNotice.fromPartial({
        kind: CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION,
        time: now,
        ...(actionAt ? { actionAt } : {}),
        action: v.action ?? 'terminate',
        detail: `spot interruption: ${v.action ?? 'terminate'} at ${v.time ?? 'unknown time'}`,
      }),
    );
  }
  const rebalance = await imds.get('/latest/meta-data/events/recommendations/rebalance');
  if (rebalance) {
    const v = JSON.parse(rebalance) as { noticeTime?: string };
    out.push(
      CellNotice.fromPartial({
        kind: CellNoticeKind.CELL_NOTICE_KIND_REBALANCE_RECOMMENDATION,
        time: now,
        detail: `rebalance recommendation at ${v.noticeTime ?? 'unknown time'}`,
      }),
    );
  }
  const maint = await imds.get('/latest/meta-data/events/maintenance/scheduled');
  if (maint) {
    const events = JSON.parse(maint) as Array<{ Code?: string; NotBefore?: string; Description?: string; State?: string }>;
    for (const e of events) {
      if (e.State === 'completed' || e.State === 'canceled') continue;
      const actionAt = parseDate(e.NotBefore);
      out.push(
        CellNotice.fromPartial({
          kind: CellNoticeKind.CELL_NOTICE_KIND_SCHEDULED_MAINTENANCE,
          time: now,
          ...(actionAt ? { actionAt } : {}),
          action: e.Code ?? '',
          detail: e.Description ?? 'scheduled maintenance',
        }),
      );
    }
  }
  return out;
}

/** One poll of a GCE instance's metadata: a preemption (instance/preempted TRUE) and host maintenance events. */
export async function readGceNotices(gce: GceMetadataClient, now = new Date()): Promise<CellNotice[]> {
  const out: CellNotice[] = [];
  const preempted = await gce.get('/computeMetadata/v1/instance/preempted');
  if (preempted?.trim().toUpperCase() === 'TRUE') {
    out.push(
      CellNotice.fromPartial({
        kind: CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION,
        time: now,
        // GCE gives no time for the end: about 30 seconds after the notice. No actionAt, so
        // that every poll's notice is the same one (reported once).
        action: 'terminate',
        detail: 'GCE preemption (instance/preempted is TRUE): the Spot VM ends in about 30 seconds',
      }),
    );
  }
  const maint = (await gce.get('/computeMetadata/v1/instance/maintenance-event'))?.trim();
  if (maint && maint !== 'NONE') {
    out.push(CellNotice.fromPartial({ kind: CellNoticeKind.CELL_NOTICE_KIND_SCHEDULED_MAINTENANCE, time: now, action: maint, detail: `GCE host maintenance: ${maint}` }));
  }
  return out;
}

function key(n: CellNotice): string {
  return `${n.kind}|${n.action}|${n.actionAt?.toISOString() ?? ''}|${n.kind === CellNoticeKind.CELL_NOTICE_KIND_REBALANCE_RECOMMENDATION ? '' : n.detail}`;
}

export function watchInstanceNotices(o: WatchOptions): NoticeWatcher {
  if (!o.imds === !o.gce) throw new Error('watchInstanceNotices: give exactly one of imds (EC2) and gce (GCE)');
  const seenKeys = new Set<string>();
  const seen: CellNotice[] = [];
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;
  const loop = (async () => {
    while (!stopped) {
      try {
        const found = o.gce ? await readGceNotices(o.gce) : o.imds ? await readNotices(o.imds) : [];
        for (const n of found) {
          const k = key(n);
          if (seenKeys.has(k)) continue;
          seenKeys.add(k);
          seen.push(n);
          o.onNotice(n);
        }
      } catch (err) {
        o.onError?.(err);
      }
      if (stopped) break;
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, o.intervalMs ?? 5000);
      });
    }
  })();
  return {
    seen,
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      wake?.();
      await loop;
    },
  };
}
