import { spawnSync } from 'node:child_process';
import { lstatSync, type Stats } from 'node:fs';
import { join } from 'node:path';

export type LowerLookup =
  | { kind: 'found'; layer: string; st: Stats }
  | { kind: 'absent' }
  /** A directory component that overlayfs would serve is a symlink: the merged path leads wherever it points. */
  | { kind: 'symlink'; prefix: string };

/** Opaque markers of committed (immutable) layer dirs, by absolute path; bounded, refilled on demand. */
const opaqueCache = new Map<string, boolean>();

function isOpaque(path: string): boolean {
  let v = opaqueCache.get(path);
  if (v === undefined) {
    // Node has no getxattr; only dirs shared by several layers are ever asked, once each.
    const r = spawnSync('getfattr', ['-h', '--absolute-names', '--only-values', '-n', 'trusted.overlay.opaque', '--', path], { encoding: 'utf8' });
    v = r.status === 0 && r.stdout === 'y';
    if (opaqueCache.size > 10_000) opaqueCache.clear();
    opaqueCache.set(path, v);
  }
  return v;
}

/**
 * Looks `rel` up in overlayfs lower dirs (topmost first) the way overlayfs serves the merged
 * tree: component by component, each in the topmost layer holding it; a directory merges with
 * the directories of the same path below it until an opaque one or a non-directory; a whiteout
 * (0/0 char device) or a non-directory hides everything below. No symlink is followed in any
 * component (openat2 RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH): each lstat is of a path whose
 * ancestors were already seen to be real directories in that very layer, so a symlink of one
 * layer, hidden by a directory of a later one, is never walked through.
 */
export function lookupLower(lowers: string[], rel: string): LowerLookup {
  const parts = rel.split('/');
  let stack = lowers;
  let prefix = '';
  for (let i = 0; i < parts.length; i++) {
    const p = prefix === '' ? parts[i]! : `${prefix}/${parts[i]}`;
    let hit: { layer: string; st: Stats } | undefined;
    const merged: string[] = [];
    for (let j = 0; j < stack.length; j++) {
      const layer = stack[j]!;
      let st: Stats;
      try {
        st = lstatSync(join(layer, p));
      } catch {
        continue;
      }
      if (st.isCharacterDevice() && st.rdev === 0) break;
      hit ??= { layer, st };
      if (!st.isDirectory()) break;
      merged.push(layer);
      if (j < stack.length - 1 && isOpaque(join(layer, p))) break;
    }
    if (!hit) return { kind: 'absent' };
    if (i === parts.length - 1) return { kind: 'found', ...hit };
    if (hit.st.isSymbolicLink()) return { kind: 'symlink', prefix: p };
    if (!hit.st.isDirectory()) return { kind: 'absent' };
    stack = merged;
    prefix = p;
  }
  return { kind: 'absent' };
}
