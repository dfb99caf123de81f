#!/usr/bin/env node
// docs/DEVELOPING.md maps every module of every package, one line each. This check keeps the map
// and the tree in step (run by `npm run lint`): each source module must be named in the map
// (as `dir/file.ts` under its package's heading block, or as a whole `dir/` line), and each
// module the map names must exist.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const doc = readFileSync(join(root, 'docs', 'DEVELOPING.md'), 'utf8');

function walk(dir) {
  const out = [];
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) {
      if (e !== 'gen') out.push(...walk(p));
    } else if (/\.(ts|mjs)$/.test(e) && !e.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

// The map's code blocks: each line starts with a path relative to its package's src/.
const blocks = [...doc.matchAll(/^### (\S+):[^\n]*\n```\n([\s\S]*?)```/gm)];
const named = new Map(); // package -> Set of names (file paths and dir/ prefixes)
for (const [, pkg, body] of blocks) {
  const set = named.get(pkg) ?? new Set();
  for (const line of body.split('\n')) {
    const first = line.trim().split(/\s+/)[0];
    if (first) for (const n of first.split(',')) set.add(n);
  }
  named.set(pkg, set);
}

const problems = [];
for (const pkg of readdirSync(join(root, 'packages'))) {
  const src = join(root, 'packages', pkg, 'src');
  if (!existsSync(src)) continue;
  const names = named.get(pkg);
  if (!names) {
    problems.push(`packages/${pkg}: no "### ${pkg}: ..." map block in docs/DEVELOPING.md`);
    continue;
  }
  for (const f of walk(src)) {
    const rel = relative(src, f);
    const covered = names.has(rel) || [...names].some((n) => n.endsWith('/') && rel.startsWith(n));
    if (!covered) problems.push(`packages/${pkg}/src/${rel}: not in the docs/DEVELOPING.md map (add one line: what it owns)`);
  }
  for (const n of names) {
    if (!existsSync(join(src, n))) problems.push(`docs/DEVELOPING.md names packages/${pkg}/src/${n}, which does not exist`);
  }
}
if (problems.length) {
  process.stderr.write(`${problems.join('\n')}\n`);
  process.exit(1);
}
