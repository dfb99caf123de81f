// Resolves a path that comes from outside (an image, a volume item, a subPath) inside a root
// directory, following symlinks the way the kernel would if `root` were `/`, so that neither
// `..` nor a symlink (absolute or relative) can lead outside the root.
import { lstatSync, readlinkSync } from 'node:fs';
import { join, posix } from 'node:path';
import { CelloError } from '@cello/proto';

/** A path from an image or a pod that would resolve outside its root. */
export class PathEscapeError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

/**
 * Returns the host path of `p` (interpreted relative to `root`) with every symlink on the way
 * resolved inside root. The last component need not exist.
 */
export function resolveInRoot(root: string, p: string, maxLinks = 40): string {
  const pending = p.split('/').filter((c) => c !== '' && c !== '.');
  const done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '..') {
      done.pop(); // `..` at the root stays at the root, as in the kernel
      continue;
    }
    const host = join(root, ...done, c);
    let st;
    try {
      st = lstatSync(host);
    } catch {
      done.push(c, ...pending.filter((x) => x !== '.'));
      // The rest does not exist: it cannot be a symlink, but may still hold `..`.
      const norm = posix.normalize('/' + done.join('/'));
      return join(root, norm);
    }
    if (st.isSymbolicLink()) {
      if (++links > maxLinks) throw new PathEscapeError(`too many symlinks resolving ${p}`);
      const target = readlinkSync(host);
      const parts = target.split('/').filter((x) => x !== '' && x !== '.');
      if (target.startsWith('/')) done.length = 0;
      pending.unshift(...parts);
      continue;
    }
    done.push(c);
  }
  return join(root, ...done);
}

/** A relative item path as Kubernetes allows it in volumes: no absolute path, no `..`. */
export function checkItemPath(p: string): string | undefined {
  if (p === '') return 'must not be empty';
  if (p.startsWith('/')) return 'must be a relative path';
  if (p.split('/').includes('..')) return "must not contain '..'";
  return undefined;
}
