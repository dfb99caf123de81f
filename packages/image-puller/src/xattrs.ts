import { spawn } from 'node:child_process';
import { closeSync, constants as C, fstatSync, openSync } from 'node:fs';
import type { Logger } from 'pino';
import { PullError } from './errors.js';

/** The kernel's own bounds (XATTR_NAME_MAX, XATTR_SIZE_MAX): nothing longer can be stored anyway. */
export const MAX_XATTR_NAME = 255;
export const MAX_XATTR_VALUE = 64 << 10;
/**
 * Extended attributes held in memory for one layer until its files are complete. Real layers
 * carry a few bytes per file (security.capability, SELinux labels); a PAX header may hold 1 MiB
 * per entry, so without a bound a layer of many entries could exhaust memory.
 */
export const MAX_LAYER_XATTR_BYTES = 64 << 20;

/** Not in the fs module's constants: an fd that names an inode without opening it (no side effects on devices or FIFOs). */
const O_PATH = 0o10000000;
/** Open fds handed to one setfattr run; well below the default soft limit of 1024. */
const BATCH = 256;

function unsafe(entry: string, why: string): PullError {
  return new PullError('unsafe-content', `layer entry ${JSON.stringify(entry)}: ${why}`);
}

/**
 * An image's xattrs after the policy: the names an image may set, validated.
 *
 * Refused (the pull fails, naming the entry and attribute): names that no filesystem would have
 * given `tar --xattrs` — empty, over 255 bytes, with control characters, `=` or non-ASCII (names
 * were once written into a `setfattr --restore` dump where a newline started a new `# file:`
 * block for any path) — values over 64 KiB, and overlayfs' own `trusted.overlay.*` and
 * `user.overlay.*`: with them a layer could forge whiteouts, opaque dirs or redirects to other
 * paths of the merged tree; only the unpacker writes them (opaque dirs).
 *
 * Skipped with a warning: other namespaces (`system.*` ACLs, unknown prefixes). containerd and
 * moby likewise drop attributes the host cannot take (ENOTSUP/EPERM) instead of failing the pull,
 * and such attributes of a build machine (ACLs, NFSv4 ACLs) mean nothing in a container; and
 * `user.*` on anything but files and directories, which Linux cannot store (EPERM).
 */
export function checkXattrs(entry: string, attrs: Map<string, Buffer>, type: string, logger: Logger | undefined): Map<string, Buffer> | undefined {
  let out: Map<string, Buffer> | undefined;
  for (const [name, value] of attrs) {
    const q = JSON.stringify(name);
    if (name === '') throw unsafe(entry, 'extended attribute with an empty name');
    if (Buffer.byteLength(name) > MAX_XATTR_NAME) throw unsafe(entry, `extended attribute name ${q.slice(0, 80)}... is longer than ${MAX_XATTR_NAME} bytes`);
    if (!/^[\x20-\x3c\x3e-\x7e]+$/.test(name)) throw unsafe(entry, `extended attribute name ${q} has a control character, '=' or a character outside ASCII`);
    if (value.length > MAX_XATTR_VALUE) throw unsafe(entry, `extended attribute ${q} has a value of ${value.length} bytes, over ${MAX_XATTR_VALUE}`);
    if (name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.')) throw unsafe(entry, `extended attribute ${q} is overlayfs' own; an image may not set it`);
    const user = name.startsWith('user.');
    if (!user && !name.startsWith('security.') && !name.startsWith('trusted.')) {
      logger?.warn({ entry, xattr: name }, 'skipping an extended attribute outside the user., security. and trusted. namespaces');
      continue;
    }
    if (user && type !== 'file' && type !== 'dir' && type !== 'link') {
      logger?.warn({ entry, xattr: name }, 'skipping a user. extended attribute on a special file or symlink (Linux cannot store it)');
      continue;
    }
    (out ??= new Map()).set(name, value);
  }
  return out;
}

/** getfattr --dump quoting: octal escapes for anything but plain printable ASCII. */
export function dumpQuote(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    out += b < 0x21 || b > 0x7e || b === 0x5c || b === 0x3d || b === 0x22 ? `\\${b.toString(8).padStart(3, '0')}` : String.fromCharCode(b);
  }
  return out;
}

/** Reverses dumpQuote (getfattr's output). */
export function dumpUnquote(s: string): string {
  if (!s.includes('\\')) return s;
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else bytes.push(...Buffer.from(s[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Runs a helper command with `input` on stdin; resolves with its stdout. */
export function run(cmd: string, args: string[], input: string, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => reject(new PullError('unsupported', `${what}: cannot run ${cmd}: ${e.message}`)));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new PullError('invalid', `${what}: ${cmd} failed: ${err.trim().slice(0, 500)}`))));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

export interface XattrTarget {
  /** Absolute path of a file this unpack created; its parents are verified directories. */
  path: string;
  /** The tar entry, for errors. */
  entry: string;
  dir: boolean;
  attrs: Map<string, Buffer>;
}

/**
 * Sets xattrs per file descriptor. Node has no xattr calls, so `setfattr` sets them, but it is
 * given no path an image chose: each file is opened here O_PATH|O_NOFOLLOW (the exact inode
 * created, a symlink itself rather than its target), checked to be what was created, and named
 * to setfattr as `/proc/PID/fd/N` — the kernel resolves that magic link to the open inode and
 * follows nothing further. Names were validated (checkXattrs) and are quoted; values are base64.
 */
export async function setXattrs(targets: XattrTarget[]): Promise<void> {
  for (let i = 0; i < targets.length; i += BATCH) {
    const batch = targets.slice(i, i + BATCH);
    const fds: number[] = [];
    try {
      let dump = '';
      for (const t of batch) {
        const fd = openSync(t.path, O_PATH | C.O_NOFOLLOW | (t.dir ? C.O_DIRECTORY : 0));
        fds.push(fd);
        if (fstatSync(fd).isDirectory() !== t.dir) throw new PullError('unsafe-content', `layer entry ${JSON.stringify(t.entry)}: changed type while unpacking`);
        dump += `# file: /proc/${process.pid}/fd/${fd}\n`;
        for (const [k, v] of t.attrs) dump += `${dumpQuote(k)}=0s${v.toString('base64')}\n`;
        dump += '\n';
      }
      await run('setfattr', ['--restore=-'], dump, 'setting extended attributes').catch((err: PullError) => {
        // Name the entries, not the fds setfattr saw.
        const msg = err.message.replace(/\/proc\/\d+\/fd\/(\d+)/g, (m, fd: string) => {
          const i = fds.indexOf(Number(fd));
          return i >= 0 ? `layer entry ${JSON.stringify(batch[i]!.entry)}` : m;
        });
        throw new PullError(err.kind, msg, { cause: err });
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  }
}
