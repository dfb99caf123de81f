// Logs that outlive the cell: when a pod ends, the last bytes of each container's log (bounded,
// `logs.keepBytes` per container) are read from its agent and kept in the store with the pod,
// one record per pod, so `cellctl logs` / `kubectl logs` of a finished Job pod still answer after
// its cell is gone. Kept `logs.retainSeconds` after the pod ended; then the record is pruned to a
// tombstone that says when, so the answer is an honest "pruned", not a missing cell.
import type { ClientReadableStream } from '@grpc/grpc-js';
import { LogChunk, LogEntry, LogsRequest, type CellAgentClient } from '@cello/proto/cell';
import type { Store } from '../store/store.js';

export const SAVED_LOGS = 'logs/';

export const DEFAULT_KEEP_BYTES = 64 * 1024;
export const DEFAULT_RETAIN_SECONDS = 24 * 3600;

export interface SavedLogsOptions {
  /** Bytes kept per container: the end of its log. */
  keepBytes: number;
  /** How long after the pod ended its logs are kept. */
  retainSeconds: number;
}

/** One line as kept: [seconds, nanos, stream (1 stdout, 2 stderr), line (base64), partial]. */
type SavedLine = [number, number, number, string, boolean];

export interface SavedPodLogs {
  uid: string;
  cellId: string;
  savedAt: string;
  /** By container; `dropped`: bytes of the log before what was kept. */
  containers?: Record<string, { lines: SavedLine[]; truncated: boolean }>;
  /** Set once pruned (the lines are gone). */
  prunedAt?: string;
  /** Containers whose logs could not be read when the pod ended, and why. */
  errors?: Record<string, string>;
}

export function savedLogsKey(ns: string, name: string): string {
  return `${SAVED_LOGS}${ns}/${name}`;
}

/** Reads the end of one container's log from its agent (bounded in bytes and time). */
async function readTail(client: CellAgentClient, container: string, keepBytes: number, timeoutMs: number): Promise<{ lines: SavedLine[]; truncated: boolean }> {
  // One more byte than kept tells whether the log was longer.
  const req = LogsRequest.fromPartial({ container, follow: false, limitBytes: keepBytes + 1 });
  const stream: ClientReadableStream<LogChunk> = client.logs(req, { deadline: Date.now() + timeoutMs });
  const entries: LogEntry[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: LogChunk) => entries.push(...c.entries));
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  let bytes = entries.reduce((n, e) => n + e.line.length + (e.partial ? 0 : 1), 0);
  const truncated = bytes > keepBytes;
  while (bytes > keepBytes && entries.length > 0) {
    const e = entries.shift()!;
    bytes -= e.line.length + (e.partial ? 0 : 1);
  }
  return { truncated, lines: entries.map((e) => [e.timeSeconds, e.timeNanos, e.stream, Buffer.from(e.line).toString('base64'), e.partial]) };
}

/** Reads every container's last logs from the pod's agent and keeps them under the pod's key (one write). */
export async function saveLogs(
  store: Store,
  client: CellAgentClient,
  pod: { namespace: string; name: string; uid: string; cellId: string; containers: string[] },
  o: SavedLogsOptions,
  timeoutMs = 10_000,
): Promise<SavedPodLogs> {
  const rec: SavedPodLogs = { uid: pod.uid, cellId: pod.cellId, savedAt: new Date().toISOString(), containers: {} };
  for (const c of pod.containers) {
    try {
      rec.containers![c] = await readTail(client, c, o.keepBytes, timeoutMs);
    } catch (err) {
      (rec.errors ??= {})[c] = (err as { details?: string }).details || (err as Error).message;
    }
  }
  await store.put(savedLogsKey(pod.namespace, pod.name), rec);
  return rec;
}

/** Replaces the lines of every record saved longer ago than retainSeconds with a tombstone; returns how many. */
export async function pruneSavedLogs(store: Store, retainSeconds: number, now = Date.now()): Promise<number> {
  const { items } = await store.list<SavedPodLogs>(SAVED_LOGS);
  let n = 0;
  for (const kv of items) {
    const r = kv.value;
    if (r.prunedAt || now - Date.parse(r.savedAt) < retainSeconds * 1000) continue;
    await store.put(kv.key, { uid: r.uid, cellId: r.cellId, savedAt: r.savedAt, prunedAt: new Date(now).toISOString() }, { expectRevision: kv.modRevision }).catch(() => undefined);
    n++;
  }
  return n;
}

/** The saved lines as LogChunks, with `kubectl logs` options applied (tail, bytes, since). */
export function savedChunks(rec: SavedPodLogs, container: string, o: LogsRequest, now = Date.now()): LogChunk[] {
  const saved = rec.containers?.[container];
  if (!saved) return [];
  let entries = saved.lines.map(([s, ns, stream, line, partial]) => LogEntry.fromPartial({ timeSeconds: s, timeNanos: ns, stream, line: Buffer.from(line, 'base64'), partial }));
  const since = o.sinceTime ? o.sinceTime.getTime() : o.sinceSeconds !== undefined ? now - o.sinceSeconds * 1000 : undefined;
  if (since !== undefined) entries = entries.filter((e) => e.timeSeconds * 1000 + e.timeNanos / 1e6 >= since);
  if (o.tailLines !== undefined) entries = o.tailLines > 0 ? entries.slice(-o.tailLines) : [];
  if (o.limitBytes !== undefined) {
    let bytes = 0;
    const kept: LogEntry[] = [];
    for (let i = entries.length - 1; i >= 0; i--) {
      bytes += entries[i]!.line.length + (entries[i]!.partial ? 0 : 1);
      if (bytes > o.limitBytes) break;
      kept.unshift(entries[i]!);
    }
    entries = kept;
  }
  return entries.length ? [LogChunk.fromPartial({ entries })] : [];
}
