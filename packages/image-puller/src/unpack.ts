import {
  chmodSync,
  closeSync,
  constants as C,
  copyFileSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { decompress } from './decompress.js';
import { InThreadSha256, OffThreadSha256 } from './hasher.js';
import type { Logger } from 'pino';
import { PullError } from './errors.js';
import type { Compression } from './media.js';
import { lookupLower } from './lower.js';
import { TarParser, type TarHeader, type TarSink } from './tar.js';
import { checkXattrs, dumpUnquote, MAX_LAYER_XATTR_BYTES, run, setXattrs, type XattrTarget } from './xattrs.js';

/**
 * `apply`: the layer is applied onto a root filesystem (whiteouts delete, opaque dirs are emptied).
 * `overlay`: the layer becomes an overlayfs lower dir (whiteouts are 0/0 character devices, opaque
 * dirs carry `trusted.overlay.opaque=y`, hardlinks to lower files copy the file up).
 */
export type UnpackMode = 'apply' | 'overlay';

type Kind = 'dir' | 'symlink' | 'other';

/** What is known about a tree being written; reused across layers applied to one rootfs. */
export class TreeState {
  readonly known = new Map<string, Kind>();
  /** Set once a directory with the setgid bit exists: what is created under it takes its group. */
  setgidDirs = false;
  /** true when every path under the root is in `known` (the tree started empty and only we wrote it). */
  constructor(public authoritative: boolean) {
    this.known.set('', 'dir');
  }
  static forDir(dir: string): TreeState {
    let empty = false;
    try {
      empty = readdirSync(dir).length === 0;
    } catch {
      empty = false;
    }
    return new TreeState(empty);
  }
}

/**
 * What one image may write to the cell in total, across its layers: a layer may not exhaust the
 * disk (bytes of the uncompressed tar streams and of files copied up) or the inodes (entries and
 * the directories they imply).
 */
export class UnpackBudget {
  bytes = 0;
  entries = 0;
  constructor(
    readonly maxBytes: number,
    readonly maxEntries: number,
  ) {}

  charge(bytes: number, entries: number): void {
    this.bytes += bytes;
    this.entries += entries;
    if (this.bytes > this.maxBytes) {
      throw new PullError('unsafe-content', `image unpacks to more than the limit of ${this.maxBytes} bytes (option maxImageBytes; CLI --max-image-bytes)`);
    }
    if (this.entries > this.maxEntries) {
      throw new PullError('unsafe-content', `image has more than the limit of ${this.maxEntries} files and directories (option maxImageEntries; CLI --max-image-entries)`);
    }
  }
}

export interface UnpackOptions {
  dir: string;
  mode: UnpackMode;
  state: TreeState;
  /** Upper bound on the uncompressed layer size (decompression bombs). */
  maxBytes: number;
  /** The image's total, shared by its layers; what a failed layer charged is refunded. */
  budget?: UnpackBudget | undefined;
  /** Overlay mode: the finished lower layer dirs, topmost first; awaited only when a hardlink needs them. */
  lowerDirs?: () => Promise<string[]>;
  logger?: Logger | undefined;
  signal?: AbortSignal | undefined;
  /** Hash the DiffID on the worker thread (the layer follows a download in this process). */
  hashOffThread?: boolean | undefined;
}

interface Meta {
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

interface Special extends Meta {
  kind: 'whiteout' | 'fifo' | 'char' | 'block';
  major: number;
  minor: number;
}

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
/** What this process creates is owned by 0:0 (absent a setgid parent), so chown to 0:0 can be skipped. */
const createsAsRoot = isRoot && process.geteuid?.() === 0 && process.getegid?.() === 0;
const O_FILE = C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW; // libuv adds O_CLOEXEC

function unsafe(entry: string, why: string): PullError {
  return new PullError('unsafe-content', `layer entry ${JSON.stringify(entry)}: ${why}`);
}

/** Lexically cleans a tar path to `a/b/c` ('' is the root); anything leaving the root is refused. */
export function cleanPath(name: string, entry: string = name): string {
  if (name.startsWith('/')) throw unsafe(entry, 'absolute path');
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) throw unsafe(entry, 'path escapes the root');
      out.pop();
      continue;
    }
    out.push(part);
  }
  return out.join('/');
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function under(p: string, prefix: string): boolean {
  return p === prefix || prefix === '' || p.startsWith(`${prefix}/`);
}

function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A file's extended attributes (Node has no getxattr): `getfattr`, from the same package as setfattr. */
async function readXattrs(path: string): Promise<Map<string, Buffer>> {
  const out = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', path], '', `reading the extended attributes of ${path}`);
  const attrs = new Map<string, Buffer>();
  for (const line of out.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) attrs.set(dumpUnquote(line), Buffer.alloc(0));
    else {
      const v = line.slice(eq + 1);
      attrs.set(dumpUnquote(line.slice(0, eq)), v.startsWith('0s') ? Buffer.from(v.slice(2), 'base64') : Buffer.from(v.replace(/^"|"$/g, '')));
    }
  }
  return attrs;
}

class LayerWriter implements TarSink {
  private readonly known: Map<string, Kind>;
  private readonly layerPaths = new Set<string>();
  private readonly dirMeta = new Map<string, Meta>();
  private readonly specials = new Map<string, Special>();
  private readonly xattrs = new Map<string, Map<string, Buffer>>();
  private fd = -1;
  private cur: TarHeader | undefined;
  private inodeCache = new Map<string, Map<number, string[]>>();
  private xattrBytes = 0;
  /** What this layer charged to the image's budget, so a failed layer can give it back. */
  private readonly charged = { bytes: 0, entries: 0 };

  /** Permission bits open(2) would strip from a new file's mode. */
  private readonly umask = process.umask();

  constructor(private readonly o: UnpackOptions) {
    this.known = o.state.known;
    // The root itself may pass its group on (a setgid cache or target directory).
    if (isRoot && (statSync(o.dir).mode & 0o2000) !== 0) o.state.setgidDirs = true;
  }

  /** Counts what this layer writes against the image's budget; throws past a limit. */
  charge(bytes: number, entries: number): void {
    const b = this.o.budget;
    if (!b) return;
    this.charged.bytes += bytes;
    this.charged.entries += entries;
    b.charge(bytes, entries);
  }

  refund(): void {
    const b = this.o.budget;
    if (!b) return;
    b.bytes -= this.charged.bytes;
    b.entries -= this.charged.entries;
    this.charged.bytes = this.charged.entries = 0;
  }

  /**
   * Whether an entry needs a chown after we create it. Most entries of most layers are root's,
   * and creating them as root already gives 0:0, unless a setgid directory passes its group on
   * (which only an authoritative tree, whose directories we made, lets us rule out).
   */
  private needsChown(h: { uid: number; gid: number }): boolean {
    if (!isRoot) return false;
    return h.uid !== 0 || h.gid !== 0 || !createsAsRoot || !this.o.state.authoritative || this.o.state.setgidDirs;
  }

  private abs(rel: string): string {
    return rel === '' ? this.o.dir : join(this.o.dir, rel);
  }

  private kindOf(rel: string): Kind | undefined {
    const k = this.known.get(rel);
    if (k !== undefined || this.o.state.authoritative) return k;
    let st: Stats;
    try {
      st = lstatSync(this.abs(rel));
    } catch {
      return undefined;
    }
    const kind: Kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    this.known.set(rel, kind);
    return kind;
  }

  /**
   * Drops everything recorded at or under `rel` after it was removed from disk. Only a directory
   * has anything under it: for a file or a link the exact keys go, instead of a walk over every
   * path of the tree (thousands, once per whiteout or replaced file).
   */
  private forget(rel: string, dir: boolean): void {
    const maps = [this.known, this.dirMeta, this.specials, this.xattrs] as Map<string, unknown>[];
    if (!dir) {
      for (const m of maps) m.delete(rel);
      this.layerPaths.delete(rel);
      return;
    }
    for (const m of maps) {
      for (const k of m.keys()) if (under(k, rel)) m.delete(k);
    }
    for (const k of this.layerPaths) if (under(k, rel)) this.layerPaths.delete(k);
  }

  private remove(rel: string): void {
    if (rel === '') return;
    // What is recorded says whether `rel` is a directory; unknown (a tree we did not write), assume it is.
    const kind = this.known.get(rel);
    rmSync(this.abs(rel), { recursive: true, force: true });
    this.forget(rel, kind === undefined || kind === 'dir');
  }

  /**
   * Makes every ancestor of `rel` a real directory inside the root. A symlink on the way is
   * refused (writing through it could land anywhere); a file on the way is replaced by a directory.
   */
  private ensureParents(rel: string, entry: string): void {
    const parent = parentOf(rel);
    if (parent === '' || this.known.get(parent) === 'dir') return; // invariant: a known dir has verified ancestors
    const parts = parent.split('/');
    let p = '';
    for (const part of parts) {
      p = p === '' ? part : `${p}/${part}`;
      const k = this.kindOf(p);
      if (k === 'dir') continue;
      if (k === 'symlink') throw unsafe(entry, `parent ${JSON.stringify(p)} is a symlink`);
      if (k === 'other') this.remove(p);
      this.charge(0, 1);
      mkdirSync(this.abs(p), 0o755);
      this.known.set(p, 'dir');
    }
  }

  /** Checks that the ancestors of `rel` are real directories, without creating anything. */
  private parentsExist(rel: string, entry: string): boolean {
    const parent = parentOf(rel);
    if (parent === '' || this.known.get(parent) === 'dir') return true;
    let p = '';
    for (const part of parent.split('/')) {
      p = p === '' ? part : `${p}/${part}`;
      const k = this.kindOf(p);
      if (k === 'symlink') throw unsafe(entry, `parent ${JSON.stringify(p)} is a symlink`);
      if (k !== 'dir') return false;
    }
    return true;
  }

  /** Clears the way for a new entry of `kind` at `rel`; keeps an existing dir when a dir comes. */
  private prepare(rel: string, kind: Kind): boolean {
    const existing = this.kindOf(rel);
    if (existing === undefined) return false;
    if (kind === 'dir' && existing === 'dir') return true;
    this.remove(rel);
    return false;
  }

  private meta(h: TarHeader): Meta {
    return { mode: h.mode, uid: h.uid, gid: h.gid, mtime: h.mtime };
  }

  entry(h: TarHeader): void | Promise<void> {
    if (this.o.signal?.aborted) throw new PullError('network', 'aborted');
    this.charge(0, 1);
    const rel = cleanPath(h.name);
    const parent = parentOf(rel);
    if (this.o.mode === 'overlay' && this.o.lowerDirs && parent !== '' && this.known.get(parent) === undefined) {
      return this.lowerParents(parent, h.name).then(() => this.entryAt(rel, h));
    }
    return this.entryAt(rel, h);
  }

  /**
   * Overlay mode, a parent this layer does not create itself: it stands for the lower layers'
   * directory. Refuse if that is a symlink (the merged tree would write through it), and give
   * the new directory the lower one's metadata, as overlayfs' copy-up does.
   */
  private async lowerParents(parent: string, entry: string): Promise<void> {
    const lowers = await this.o.lowerDirs!();
    if (this.hiddenHere(parent)) return;
    let p = '';
    for (const part of parent.split('/')) {
      p = p === '' ? part : `${p}/${part}`;
      if (this.known.get(p) !== undefined) continue;
      const r = lookupLower(lowers, p);
      if (r.kind === 'symlink') throw unsafe(entry, `parent ${JSON.stringify(r.prefix)} is a symlink in a lower layer`);
      if (r.kind === 'absent') return;
      if (r.st.isSymbolicLink()) throw unsafe(entry, `parent ${JSON.stringify(p)} is a symlink in a lower layer`);
      if (!r.st.isDirectory()) return; // replaced by this layer's directory
      if (!this.dirMeta.has(p)) this.dirMeta.set(p, { mode: r.st.mode & 0o7777, uid: r.st.uid, gid: r.st.gid, mtime: r.st.mtimeMs / 1000 });
    }
  }

  /**
   * Overlay mode: whether this layer itself hides the lower layers' `rel`: an ancestor it wrote
   * is opaque, or is not a directory (a file, or a whiteout).
   */
  private hiddenHere(rel: string): boolean {
    let p = '';
    for (const part of rel.split('/')) {
      const k = this.known.get(p);
      if (k === undefined) return false;
      if (k !== 'dir' || this.xattrs.get(p)?.has('trusted.overlay.opaque')) return true;
      p = p === '' ? part : `${p}/${part}`;
    }
    return false;
  }

  private checkedXattrs(h: TarHeader): Map<string, Buffer> | undefined {
    const x = checkXattrs(h.name, h.xattrs!, h.type, this.o.logger);
    if (!x) return undefined;
    for (const [k, v] of x) this.xattrBytes += k.length + v.length;
    if (this.xattrBytes > MAX_LAYER_XATTR_BYTES) {
      throw unsafe(h.name, `the layer's extended attributes exceed ${MAX_LAYER_XATTR_BYTES} bytes`);
    }
    return x;
  }

  /**
   * Records an entry's xattrs once it exists: replacing an older file forgets what was recorded
   * for that path, so recording first lost the new file's own (a later layer's setcap'd binary).
   * A directory kept from earlier in the layer keeps what it had (e.g. the opaque marker).
   */
  private keepXattrs(rel: string, x: Map<string, Buffer>): void {
    const cur = this.xattrs.get(rel);
    if (cur) for (const [k, v] of x) cur.set(k, v);
    else this.xattrs.set(rel, x);
  }

  private entryAt(rel: string, h: TarHeader): void | Promise<void> {
    const slash = rel.lastIndexOf('/');
    const base = rel.slice(slash + 1);
    if (base.startsWith('.wh.')) return this.whiteout(rel, base, h.name);
    if (rel === '') {
      if (h.type === 'dir') this.dirMeta.set('', this.meta(h));
      return;
    }
    this.ensureParents(rel, h.name);
    this.layerPaths.add(rel);
    const x = h.xattrs?.size ? this.checkedXattrs(h) : undefined;
    const r = this.create(rel, h);
    if (!x || ((h.type === 'char' || h.type === 'block') && !isRoot)) return r; // device nodes are skipped then
    if (r) return r.then(() => this.keepXattrs(rel, x));
    this.keepXattrs(rel, x);
  }

  private create(rel: string, h: TarHeader): void | Promise<void> {
    const abs = this.abs(rel);
    switch (h.type) {
      case 'file': {
        this.prepare(rel, 'other');
        this.specials.delete(rel);
        this.fd = openSync(abs, O_FILE, h.mode & 0o777);
        this.cur = h;
        this.known.set(rel, 'other');
        return;
      }
      case 'dir': {
        if (!this.prepare(rel, 'dir')) mkdirSync(abs, 0o700);
        this.known.set(rel, 'dir');
        this.dirMeta.set(rel, this.meta(h));
        return;
      }
      case 'symlink': {
        if (h.linkname === '') throw new PullError('invalid', `layer entry ${JSON.stringify(h.name)}: symlink with an empty target`);
        this.prepare(rel, 'symlink');
        this.specials.delete(rel);
        symlinkSync(h.linkname, abs);
        if (this.needsChown(h)) lchownSync(abs, h.uid, h.gid);
        lutimesSync(abs, h.mtime, h.mtime);
        this.known.set(rel, 'symlink');
        return;
      }
      case 'link':
        return this.hardlink(rel, h);
      case 'char':
      case 'block':
      case 'fifo':
        if (h.type !== 'fifo' && !isRoot) {
          this.o.logger?.warn({ entry: h.name }, 'skipping device node: not running as root');
          this.layerPaths.delete(rel);
          return;
        }
        this.prepare(rel, 'other');
        this.specials.set(rel, { ...this.meta(h), kind: h.type, major: h.devmajor, minor: h.devminor });
        this.known.set(rel, 'other');
        return;
    }
  }

  data(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) off += writeSync(this.fd, chunk, off, chunk.length - off);
  }

  end(): void {
    const h = this.cur;
    if (!h) return;
    const fd = this.fd;
    this.fd = -1;
    this.cur = undefined;
    try {
      const chown = this.needsChown(h);
      if (chown) fchownSync(fd, h.uid, h.gid);
      // open(2) set the permission bits unless the umask took some; setuid/setgid/sticky and
      // anything after a chown (which clears setuid/setgid) need the chmod.
      if (chown || (h.mode & ~0o777) !== 0 || (h.mode & this.umask) !== 0) fchmodSync(fd, h.mode);
      futimesSync(fd, h.mtime, h.mtime);
    } finally {
      closeSync(fd);
    }
  }

  private whiteout(rel: string, base: string, entry: string): void {
    const dir = parentOf(rel);
    if (base === '.wh..wh..opq') {
      if (this.o.mode === 'overlay') {
        if (dir !== '') {
          this.ensureParents(dir, entry);
          if (!this.prepare(dir, 'dir')) {
            mkdirSync(this.abs(dir), 0o755);
            this.known.set(dir, 'dir');
          }
        }
        const x = this.xattrs.get(dir) ?? new Map<string, Buffer>();
        x.set('trusted.overlay.opaque', Buffer.from('y'));
        this.xattrs.set(dir, x);
      } else {
        if (!this.parentsExist(rel, entry) || this.kindOf(dir) !== 'dir') return;
        this.emptyOpaque(dir);
      }
      return;
    }
    if (base.startsWith('.wh..wh.')) return; // aufs metadata (e.g. .wh..wh.plnk): not content
    const name = base.slice(4);
    if (name === '' || name === '.' || name === '..') throw unsafe(entry, 'whiteout names no file');
    const target = dir === '' ? name : `${dir}/${name}`;
    if (this.o.mode === 'overlay') {
      this.ensureParents(target, entry);
      if (this.kindOf(target) !== undefined) return; // content of this layer wins over its own whiteout
      this.specials.set(target, { kind: 'whiteout', major: 0, minor: 0, mode: 0, uid: 0, gid: 0, mtime: 0 });
      this.known.set(target, 'other');
      return;
    }
    if (!this.parentsExist(target, entry)) return;
    if (this.kindOf(target) !== undefined) this.remove(target);
  }

  /** Apply mode: removes everything under `dir` that this layer did not itself write. */
  private emptyOpaque(dir: string): void {
    let names: string[];
    try {
      names = readdirSync(this.abs(dir));
    } catch {
      return;
    }
    for (const n of names) {
      const p = dir === '' ? n : `${dir}/${n}`;
      if (!this.layerPaths.has(p)) this.remove(p);
      else if (this.kindOf(p) === 'dir') this.emptyOpaque(p);
    }
  }

  private async hardlink(rel: string, h: TarHeader): Promise<void> {
    if (h.linkname.startsWith('/')) throw unsafe(h.name, `hardlink target ${JSON.stringify(h.linkname)} is absolute`);
    let target: string;
    try {
      target = cleanPath(h.linkname, h.name);
    } catch {
      throw unsafe(h.name, `hardlink target ${JSON.stringify(h.linkname)} escapes the root`);
    }
    if (target === '') throw unsafe(h.name, 'hardlink to the root');
    if (target === rel) return;
    let tk = this.parentsExist(target, h.name) ? this.kindOf(target) : undefined;
    if (tk === 'dir') throw new PullError('invalid', `layer entry ${JSON.stringify(h.name)}: hardlink to a directory`);
    if (this.specials.has(target)) throw new PullError('unsupported', `layer entry ${JSON.stringify(h.name)}: hardlink to a special file of the same layer`);
    if (tk === undefined) {
      if (this.o.mode !== 'overlay' || !this.o.lowerDirs) {
        throw new PullError('invalid', `layer entry ${JSON.stringify(h.name)}: hardlink target ${JSON.stringify(h.linkname)} does not exist`);
      }
      await this.copyUp(target, h.name);
      tk = this.kindOf(target);
    }
    this.ensureParents(rel, h.name);
    this.prepare(rel, 'other');
    linkSync(this.abs(target), this.abs(rel));
    this.known.set(rel, tk === 'symlink' ? 'symlink' : 'other');
    this.layerPaths.add(rel);
  }

  /** Every path of a lower layer dir sharing an inode, for files with several links. */
  private inodePaths(dir: string, ino: number): string[] {
    let idx = this.inodeCache.get(dir);
    if (!idx) {
      idx = new Map();
      const walk = (rel: string): void => {
        for (const e of readdirSync(rel === '' ? dir : join(dir, rel), { withFileTypes: true })) {
          const p = rel === '' ? e.name : `${rel}/${e.name}`;
          if (e.isDirectory()) walk(p);
          else if (e.isFile()) {
            const st = lstatSync(join(dir, p));
            if (st.nlink > 1) {
              const l = idx!.get(st.ino) ?? [];
              l.push(p);
              idx!.set(st.ino, l);
            }
          }
        }
      };
      walk('');
      this.inodeCache.set(dir, idx);
    }
    return idx.get(ino) ?? [];
  }

  /**
   * Overlay mode, hardlink to a file of a lower layer: copy the file (and the other names of its
   * inode) into this layer, as overlayfs' own copy-up would, so the link group stays one inode.
   */
  private async copyUp(target: string, entry: string): Promise<void> {
    const lowers = await this.o.lowerDirs!();
    // Only the file overlayfs would serve at `target`: resolved per component, no symlink followed.
    const found = this.hiddenHere(target) ? { kind: 'absent' as const } : lookupLower(lowers, target);
    if (found.kind === 'symlink') {
      throw unsafe(entry, `hardlink target ${JSON.stringify(target)} passes through ${JSON.stringify(found.prefix)}, a symlink in a lower layer`);
    }
    if (found.kind === 'found') {
      const { layer: dir, st } = found;
      if (st.isDirectory()) throw new PullError('invalid', `layer entry ${JSON.stringify(entry)}: hardlink to a directory`);
      // The other names of the inode, where the merged tree shows them as this same file.
      const group = (st.nlink > 1 && st.isFile() ? this.inodePaths(dir, st.ino) : []).filter((o) => {
        if (o === target || this.hiddenHere(o)) return false;
        const r = lookupLower(lowers, o);
        return r.kind === 'found' && r.layer === dir && r.st.ino === st.ino;
      });
      group.unshift(target);
      await this.lowerParents(parentOf(target), entry);
      this.ensureParents(target, entry);
      const dst = this.abs(target);
      if (this.kindOf(target) === undefined) {
        this.charge(st.size, 1);
        if (st.isSymbolicLink()) symlinkSync(readlinkSync(join(dir, target)), dst);
        else if (st.isFile()) copyFileSync(join(dir, target), dst, C.COPYFILE_FICLONE);
        else throw new PullError('unsupported', `layer entry ${JSON.stringify(entry)}: hardlink to a special file of a lower layer`);
        if (isRoot) lchownSync(dst, st.uid, st.gid);
        if (!st.isSymbolicLink()) chmodSync(dst, st.mode & 0o7777);
        lutimesSync(dst, st.atime, st.mtime);
        // overlayfs' copy-up keeps extended attributes too (its own trusted.overlay.* aside).
        const attrs = await readXattrs(join(dir, target));
        for (const k of attrs.keys()) if (k.startsWith('trusted.overlay.') || k.startsWith('user.overlay.')) attrs.delete(k);
        if (attrs.size > 0) this.xattrs.set(target, attrs);
        this.known.set(target, st.isSymbolicLink() ? 'symlink' : 'other');
        this.layerPaths.add(target);
      }
      for (const other of group) {
        if (other === target || this.kindOf(other) !== undefined) continue;
        await this.lowerParents(parentOf(other), entry);
        this.ensureParents(other, entry);
        this.charge(0, 1);
        linkSync(dst, this.abs(other));
        this.known.set(other, 'other');
        this.layerPaths.add(other);
      }
      return;
    }
    throw new PullError('invalid', `layer entry ${JSON.stringify(entry)}: hardlink target ${JSON.stringify(target)} exists in no layer`);
  }

  closeOpen(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
  }

  /** Device nodes, FIFOs and whiteouts (Node has no mknod), xattrs, then directory metadata. */
  async finish(): Promise<void> {
    this.closeOpen();
    if (this.specials.size > 0) {
      let script = 'set -e\n';
      for (const [rel, s] of this.specials) {
        const t = s.kind === 'fifo' ? 'p' : s.kind === 'block' ? `b ${s.major} ${s.minor}` : `c ${s.major} ${s.minor}`;
        script += `mknod -m 0600 -- ${shq(this.abs(rel))} ${t}\n`;
      }
      await run('sh', ['-s'], script, 'creating device nodes, FIFOs and whiteouts');
      for (const [rel, s] of this.specials) {
        const abs = this.abs(rel);
        if (isRoot) lchownSync(abs, s.uid, s.gid);
        chmodSync(abs, s.mode);
        lutimesSync(abs, s.mtime, s.mtime);
      }
    }
    if (this.xattrs.size > 0) {
      const targets: XattrTarget[] = [];
      let skipped = false;
      for (const [rel, attrs] of this.xattrs) {
        if (!isRoot) {
          for (const k of attrs.keys()) {
            if (!k.startsWith('user.')) {
              attrs.delete(k);
              skipped = true;
            }
          }
          if (attrs.size === 0) continue;
        }
        targets.push({ path: this.abs(rel), entry: rel === '' ? '.' : rel, dir: this.known.get(rel) === 'dir', attrs });
      }
      if (skipped) this.o.logger?.warn('skipping trusted./security. extended attributes: not running as root');
      await setXattrs(targets);
    }
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, m] of dirs) {
      const abs = this.abs(rel);
      if (m.mode & 0o2000) this.o.state.setgidDirs = true;
      if (isRoot) lchownSync(abs, m.uid, m.gid);
      chmodSync(abs, m.mode);
      utimesSync(abs, m.mtime, m.mtime);
    }
  }
}

export interface UnpackResult {
  diffId: string;
  bytes: number;
}

/**
 * Unpacks one layer blob into `o.dir`, verifying its DiffID (sha256 of the uncompressed tar)
 * when `expectDiffId` is given. The uncompressed size is bounded by `o.maxBytes`.
 */
export async function unpackLayer(source: Readable, compression: Compression, expectDiffId: string | undefined, o: UnpackOptions): Promise<UnpackResult> {
  const w = new LayerWriter(o);
  try {
    return await unpackWith(w, source, compression, expectDiffId, o);
  } catch (err) {
    w.refund();
    throw err;
  }
}

async function unpackWith(w: LayerWriter, source: Readable, compression: Compression, expectDiffId: string | undefined, o: UnpackOptions): Promise<UnpackResult> {
  const parser = new TarParser(w);
  const { stream, done } = await decompress(source, compression);
  // While a download is being followed, the DiffID is hashed on a worker thread: this one also
  // serves the TLS of the downloads (hasher.ts).
  const hash = o.hashOffThread ? new OffThreadSha256() : new InThreadSha256();
  let bytes = 0;
  try {
    for await (const c of stream) {
      const chunk = c as Buffer;
      bytes += chunk.length;
      if (bytes > o.maxBytes) {
        throw new PullError('unsafe-content', `layer expands beyond the limit of ${o.maxBytes} bytes (decompression bomb?)`);
      }
      w.charge(chunk.length, 0);
      const behind = hash.update(chunk);
      if (!parser.ended) await parser.write(chunk);
      if (behind) await behind;
    }
    await done();
  } catch (err) {
    hash.dispose();
    stream.destroy();
    source.destroy();
    if (err instanceof PullError) throw err;
    const code = (err as { code?: string }).code;
    if (code && code.startsWith('Z_')) throw new PullError('integrity', `layer failed to decompress: ${(err as Error).message}`, { cause: err });
    throw err;
  } finally {
    w.closeOpen();
  }
  try {
    parser.finish();
    await w.finish();
  } catch (err) {
    hash.dispose();
    throw err;
  }
  const diffId = await hash.digest();
  if (expectDiffId && diffId !== expectDiffId) {
    throw new PullError('integrity', `layer DiffID ${diffId} does not match the image config's ${expectDiffId}`);
  }
  return { diffId, bytes };
}
