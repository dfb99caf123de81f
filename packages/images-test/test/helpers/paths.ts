import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
export const imagesDir = join(repoRoot, 'images');
export const installSh = join(imagesDir, 'install.sh');
/** Caches that survive between runs (bundles, Debian root filesystems, packer). */
export const cacheRoot = process.env.CELLO_CACHE ?? '/var/cache/cello';

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/** A short hash over files and directories (recursively), for cache keys. */
export function hashInputs(paths: string[]): string {
  const h = createHash('sha256');
  for (const p of paths) {
    let files: string[];
    try {
      files = walk(p);
    } catch {
      files = [p];
    }
    for (const f of files) {
      h.update(relative(repoRoot, f));
      h.update('\0');
      h.update(readFileSync(f));
      h.update('\0');
    }
  }
  return h.digest('hex').slice(0, 16);
}
