// Writes a secret-like volume (secret, configMap, downwardAPI, projected) so that its contents
// can change while containers have it mounted, the way the kubelet's AtomicWriter does:
//
//   <dir>/..2026_11_22_05_10_00.123456789/<files>   the payload of one version
//   <dir>/..data -> ..2026_11_22_05_10_00.123456789  swapped with one rename(2)
//   <dir>/<name> -> ..data/<name>                    one link per top-level name
//
// The volume directory itself is never replaced (it is the source of the containers' bind
// mounts, so a new directory would be invisible to them); a new version is written beside the
// old one and `..data` is renamed over, so a reader sees either the whole old or the whole new
// payload, never a torn file or a half-written set.
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { checkItemPath } from '../runtime/safe-path.js';

export interface PayloadFile {
  path: string;
  data: Buffer;
  mode: number;
}

const DATA = '..data';
const DATA_TMP = '..data_tmp';

/** Why a payload path is refused; undefined when it is fine. */
export function checkPayloadPath(p: string): string | undefined {
  const bad = checkItemPath(p);
  if (bad) return bad;
  // `..`-prefixed names are the writer's own (`..data`, the version dirs).
  if (p.split('/')[0]!.startsWith('..')) return "must not start with '..'";
  return undefined;
}

function versionName(now: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `..${now.getUTCFullYear()}_${p(now.getUTCMonth() + 1)}_${p(now.getUTCDate())}_${p(now.getUTCHours())}_${p(now.getUTCMinutes())}_${p(now.getUTCSeconds())}.`;
}

function lstatOrUndefined(p: string) {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}

/** The version directory `..data` points at, if the volume has the atomic layout. */
function currentVersion(dir: string): string | undefined {
  const st = lstatOrUndefined(join(dir, DATA));
  if (!st?.isSymbolicLink()) return undefined;
  const target = readlinkSync(join(dir, DATA));
  return target.includes('/') ? undefined : target;
}

/** True when the version dir holds exactly these files with these bytes and modes. */
function samePayload(versionDir: string, files: PayloadFile[], fsGroup: number | undefined): boolean {
  const seen = new Set<string>();
  for (const f of files) {
    const p = join(versionDir, f.path);
    const st = lstatOrUndefined(p);
    if (!st?.isFile() || (st.mode & 0o7777) !== f.mode) return false;
    if (fsGroup !== undefined && st.gid !== fsGroup) return false;
    if (!readFileSync(p).equals(f.data)) return false;
    seen.add(f.path);
  }
  const count = (d: string): number => readdirSync(d, { withFileTypes: true }).reduce((n, e) => n + (e.isDirectory() ? count(join(d, e.name)) : 1), 0);
  return count(versionDir) === seen.size;
}

/**
 * Makes `dir` show exactly `files`. Returns false when it already did (nothing written).
 * Paths must have been checked with checkPayloadPath.
 */
export function writeAtomic(dir: string, files: PayloadFile[], o: { fsGroup?: number; now?: Date } = {}): boolean {
  for (const f of files) {
    const bad = checkPayloadPath(f.path);
    if (bad) throw new Error(`path "${f.path}" ${bad}`);
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const old = currentVersion(dir);
  if (old && lstatOrUndefined(join(dir, old))?.isDirectory() && samePayload(join(dir, old), files, o.fsGroup)) return false;

  // 1. The new version, complete, beside the old one.
  const version = mkdtempSync(join(dir, versionName(o.now ?? new Date())));
  chmodSync(version, 0o755); // mkdtemp makes it 0700; containers may run as any user
  try {
    for (const f of files) {
      const target = join(version, f.path);
      mkdirSync(dirname(target), { recursive: true, mode: 0o755 });
      writeFileSync(target, f.data, { mode: f.mode, flag: 'wx' });
      chmodSync(target, f.mode); // the umask may have narrowed it
      if (o.fsGroup !== undefined) {
        try {
          chownSync(target, -1, o.fsGroup); // like the kubelet, fsGroup owns projected files
        } catch {
          /* best effort: an unprivileged agent in development */
        }
      }
    }
  } catch (err) {
    rmSync(version, { recursive: true, force: true });
    throw err;
  }

  // 2. Top-level names that the old layout held as plain files (an agent of an earlier
  // version wrote them) are removed first: they cannot be renamed over atomically anyway.
  const top = new Set(files.map((f) => f.path.split('/')[0]!));
  if (!old) {
    for (const e of readdirSync(dir)) {
      if (e.startsWith('..')) continue;
      if (!lstatOrUndefined(join(dir, e))?.isSymbolicLink()) rmSync(join(dir, e), { recursive: true, force: true });
    }
  }

  // 3. The swap: one rename makes every file of the new version visible at once.
  const vname = version.slice(dir.length + 1);
  rmSync(join(dir, DATA_TMP), { force: true });
  symlinkSync(vname, join(dir, DATA_TMP));
  renameSync(join(dir, DATA_TMP), join(dir, DATA));

  // 4. User-visible links for new names; links for names that are gone are removed.
  for (const name of top) {
    const link = join(dir, name);
    const st = lstatOrUndefined(link);
    if (st?.isSymbolicLink() && readlinkSync(link) === `${DATA}/${name}`) continue;
    if (st) rmSync(link, { recursive: true, force: true });
    symlinkSync(`${DATA}/${name}`, link);
  }
  for (const e of readdirSync(dir)) {
    if (e.startsWith('..') || top.has(e)) continue;
    rmSync(join(dir, e), { recursive: true, force: true });
  }

  // 5. Versions before the one just replaced go. The replaced one stays until the next write: a
  // reader that resolved `..data` before the swap may still be looking up files in it, and
  // removing it at once left that reader ENOENT (a test reading across 500 swaps saw it).
  for (const e of readdirSync(dir)) {
    if (e.startsWith('..') && e !== DATA && e !== vname && e !== old && statSync(join(dir, e), { throwIfNoEntry: false })?.isDirectory()) {
      rmSync(join(dir, e), { recursive: true, force: true });
    }
  }
  return true;
}
