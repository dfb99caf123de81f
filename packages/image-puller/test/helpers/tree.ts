import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

export interface Node {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: number;
}

export interface Tree {
  nodes: Map<string, Node>;
  /** Hardlink groups (paths sharing an inode), each sorted, as strings. */
  links: string[];
}

/** Everything the oracle compares: paths, types, modes, owners, sizes, content hashes, link targets, hardlink groups. */
export function snapshot(root: string, ignore: (rel: string) => boolean = () => false): Tree {
  const nodes = new Map<string, Node>();
  const inodes = new Map<string, string[]>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(rel === '' ? root : join(root, rel))) {
      const p = rel === '' ? name : `${rel}/${name}`;
      if (ignore(p)) continue;
      const abs = join(root, p);
      const st = lstatSync(abs);
      const n: Node = { type: 'file', mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
      if (st.isDirectory()) n.type = 'dir';
      else if (st.isSymbolicLink()) {
        n.type = 'symlink';
        n.target = readlinkSync(abs);
        delete (n as Partial<Node>).mode; // symlink modes are not meaningful on Linux
      } else if (st.isFile()) {
        n.size = st.size;
        n.sha256 = createHash('sha256').update(readFileSync(abs)).digest('hex');
      } else if (st.isCharacterDevice()) {
        n.type = 'char';
        n.rdev = st.rdev;
      } else if (st.isBlockDevice()) {
        n.type = 'block';
        n.rdev = st.rdev;
      } else if (st.isFIFO()) n.type = 'fifo';
      else n.type = 'socket';
      nodes.set(p, n);
      if (!st.isDirectory() && st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        inodes.set(key, [...(inodes.get(key) ?? []), p]);
      }
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  const links = [...inodes.values()]
    .filter((g) => g.length > 1)
    .map((g) => g.sort().join(' = '))
    .sort();
  return { nodes, links };
}

/** Human-readable differences (at most `max`), empty when the trees are equal. */
export function diffTrees(a: Tree, b: Tree, max = 20): string[] {
  const out: string[] = [];
  for (const [p, na] of a.nodes) {
    const nb = b.nodes.get(p);
    if (!nb) out.push(`only in first: ${p}`);
    else if (JSON.stringify(na) !== JSON.stringify(nb)) out.push(`differs: ${p}: ${JSON.stringify(na)} vs ${JSON.stringify(nb)}`);
    if (out.length >= max) return out;
  }
  for (const p of b.nodes.keys()) {
    if (!a.nodes.has(p)) out.push(`only in second: ${p}`);
    if (out.length >= max) return out;
  }
  const la = new Set(a.links);
  const lb = new Set(b.links);
  for (const g of la) if (!lb.has(g)) out.push(`hardlink group only in first: ${g}`);
  for (const g of lb) if (!la.has(g)) out.push(`hardlink group only in second: ${g}`);
  return out.slice(0, max);
}
