// emptyDir.sizeLimit on disk, enforced as the kubelet's eviction manager does: the volume's
// usage is measured on a period (du, as the kubelet's volume metrics), and a pod whose emptyDir
// holds more than its limit is evicted. (A Memory emptyDir is a tmpfs of that size instead.)
import { execFile } from 'node:child_process';
import { formatBytes } from '@cello/proto';
import { type Volume, StorageMedium } from '@cello/proto/cell';

export interface LimitedEmptyDir {
  name: string;
  dir: string;
  limitBytes: number;
}

/** The pod's disk-backed emptyDirs that have a sizeLimit. */
export function limitedEmptyDirs(volumes: readonly Volume[], dirOf: (name: string) => string): LimitedEmptyDir[] {
  const out: LimitedEmptyDir[] = [];
  for (const v of volumes) {
    const s = v.source;
    if (s?.$case !== 'emptyDir' || s.value.medium === StorageMedium.STORAGE_MEDIUM_MEMORY || s.value.sizeLimitBytes === undefined) continue;
    out.push({ name: v.name, dir: dirOf(v.name), limitBytes: s.value.sizeLimitBytes });
  }
  return out;
}

/** Bytes the directory takes on disk (one filesystem, hard links once), as `du -sxB1`. */
export function diskUsageBytes(dir: string, timeoutMs = 60_000): Promise<number> {
  return new Promise((resolve, reject) =>
    execFile('du', ['-sxB1', dir], { timeout: timeoutMs }, (err, stdout) => {
      const n = Number(String(stdout).split(/\s/)[0]);
      // du reports what it could read even when a file vanished under it (exit 1).
      if (Number.isFinite(n) && String(stdout).trim() !== '') return resolve(n);
      reject(err ?? new Error(`du ${dir}: no output`));
    }),
  );
}

/** The first emptyDir over its limit, with the kubelet's eviction message; undefined: none. */
export async function overLimit(dirs: readonly LimitedEmptyDir[]): Promise<string | undefined> {
  for (const d of dirs) {
    const used = await diskUsageBytes(d.dir).catch(() => undefined);
    if (used !== undefined && used > d.limitBytes) return `Usage of EmptyDir volume "${d.name}" exceeds the limit "${formatBytes(d.limitBytes)}". `;
  }
  return undefined;
}
