import { PullError } from './errors.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  name: string;
  linkname: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch, fractional when a PAX record gave it. */
  mtime: number;
  devmajor: number;
  devminor: number;
  /** From PAX `SCHILY.xattr.*` / `LIBARCHIVE.xattr.*`, values as raw bytes. */
  xattrs: Map<string, Buffer> | undefined;
}

/** Receives entries in archive order; a file's bytes arrive through data() between entry() and end(). */
export interface TarSink {
  entry(h: TarHeader): void | Promise<void>;
  data(chunk: Buffer): void;
  end(): void | Promise<void>;
}

const MAX_LONG_HEADER = 1 << 20;

function cstr(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString('utf8', off, end);
}

function num(b: Buffer, off: number, len: number, field: string): number {
  if (b[off]! & 0x80) {
    if (b[off] === 0xff) throw new PullError('invalid', `tar header: negative ${field}`);
    let v = b[off]! & 0x7f;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + b[i]!;
    if (!Number.isSafeInteger(v)) throw new PullError('invalid', `tar header: ${field} too large`);
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++;
  let v = 0;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) throw new PullError('invalid', `tar header: bad octal digit in ${field}`);
    v = v * 8 + (c - 0x30);
  }
  return v;
}

interface Pax {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  xattrs?: Map<string, Buffer>;
  sparse?: boolean;
}

function parsePax(buf: Buffer, into: Pax): void {
  let off = 0;
  while (off < buf.length) {
    let sp = off;
    while (sp < buf.length && buf[sp] !== 0x20) sp++;
    const len = Number(buf.toString('latin1', off, sp));
    if (!Number.isInteger(len) || len <= 0 || off + len > buf.length) {
      if (buf.subarray(off).every((c) => c === 0)) return;
      throw new PullError('invalid', 'tar: malformed PAX record');
    }
    const rec = buf.subarray(sp + 1, off + len - 1); // drop trailing newline
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new PullError('invalid', 'tar: malformed PAX record');
    const key = rec.toString('utf8', 0, eq);
    const val = rec.subarray(eq + 1);
    switch (key) {
      case 'path':
        into.path = val.toString('utf8');
        break;
      case 'linkpath':
        into.linkpath = val.toString('utf8');
        break;
      case 'size':
        into.size = Number(val.toString('latin1'));
        break;
      case 'uid':
        into.uid = Number(val.toString('latin1'));
        break;
      case 'gid':
        into.gid = Number(val.toString('latin1'));
        break;
      case 'mtime':
        into.mtime = Number(val.toString('latin1'));
        break;
      default:
        if (key.startsWith('SCHILY.xattr.')) {
          (into.xattrs ??= new Map()).set(key.slice('SCHILY.xattr.'.length), Buffer.from(val));
        } else if (key.startsWith('LIBARCHIVE.xattr.')) {
          let name: string;
          try {
            name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length));
          } catch {
            throw new PullError('invalid', `tar: PAX record ${JSON.stringify(key.slice(0, 300))} has a malformed URL-encoded xattr name`);
          }
          // Names are checked against the xattr policy (xattrs.ts) once the entry is known.
          (into.xattrs ??= new Map()).set(name, Buffer.from(val.toString('latin1'), 'base64'));
        } else if (key.startsWith('GNU.sparse.')) {
          into.sparse = true;
        }
    }
    off += len;
  }
}

const TYPES: Record<string, EntryType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'link', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

/**
 * A streaming tar reader (ustar, PAX incl. binary xattr values, GNU long names) that hands file
 * bytes to the sink as slices of the incoming chunks, without copying.
 */
export class TarParser {
  private state: 'header' | 'long' | 'data' | 'skip' | 'end' = 'header';
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private need = 512;
  private remaining = 0;
  private padding = 0;
  private longType = '';
  private pax: Pax | undefined;
  private paxGlobal: Pax | undefined;
  private gnuName: string | undefined;
  private gnuLink: string | undefined;
  private inFile = false;
  private lastName = '';

  constructor(private readonly sink: TarSink) {}

  get ended(): boolean {
    return this.state === 'end';
  }

  async write(chunk: Buffer): Promise<void> {
    let off = 0;
    const len = chunk.length;
    while (off < len) {
      switch (this.state) {
        case 'end':
          return;
        case 'data': {
          const n = Math.min(this.remaining, len - off);
          if (n > 0) this.sink.data(chunk.subarray(off, off + n));
          off += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            this.inFile = false;
            const r = this.sink.end();
            if (r) await r;
            this.state = this.padding > 0 ? 'skip' : 'header';
            this.remaining = this.padding;
            this.padding = 0;
          }
          break;
        }
        case 'skip': {
          const n = Math.min(this.remaining, len - off);
          off += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            this.state = this.padding > 0 ? 'skip' : 'header';
            this.remaining = this.padding;
            this.padding = 0;
          }
          break;
        }
        case 'header':
        case 'long': {
          const take = Math.min(this.need - this.pendingLen, len - off);
          this.pending.push(chunk.subarray(off, off + take));
          this.pendingLen += take;
          off += take;
          if (this.pendingLen === this.need) {
            const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLen);
            this.pending = [];
            this.pendingLen = 0;
            if (this.state === 'header') await this.header(buf);
            else this.long(buf);
          }
          break;
        }
      }
    }
  }

  /** Throws if the archive stopped in the middle of an entry. */
  finish(): void {
    if (this.state === 'end') return;
    if (this.state === 'header' && this.pendingLen === 0 && !this.inFile) return; // no end blocks: tolerated, like GNU tar
    throw new PullError('invalid', `tar: archive truncated${this.lastName ? ` in or after entry ${JSON.stringify(this.lastName)}` : ''}`);
  }

  private long(buf: Buffer): void {
    const pad = (512 - (buf.length % 512)) % 512;
    switch (this.longType) {
      case 'x':
        parsePax(buf, (this.pax ??= {}));
        break;
      case 'g':
        parsePax(buf, (this.paxGlobal ??= {}));
        break;
      case 'L':
        this.gnuName = cstr(buf, 0, buf.length);
        break;
      case 'K':
        this.gnuLink = cstr(buf, 0, buf.length);
        break;
    }
    this.state = pad > 0 ? 'skip' : 'header';
    this.remaining = pad;
    this.need = 512;
  }

  private async header(b: Buffer): Promise<void> {
    let zero = true;
    for (let i = 0; i < 512; i++)
      if (b[i] !== 0) {
        zero = false;
        break;
      }
    if (zero) {
      this.state = 'end';
      return;
    }
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
    const stored = num(b, 148, 8, 'checksum');
    if (stored !== sum) {
      let signed = 0;
      for (let i = 0; i < 512; i++) signed += i >= 148 && i < 156 ? 0x20 : (b[i]! << 24) >> 24;
      if (stored !== signed) throw new PullError('invalid', `tar: header checksum mismatch after entry ${JSON.stringify(this.lastName)}`);
    }
    const flag = String.fromCharCode(b[156]!);
    let size = num(b, 124, 12, 'size');
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_LONG_HEADER) throw new PullError('unsafe-content', `tar: ${flag} header of ${size} bytes exceeds ${MAX_LONG_HEADER}`);
      this.longType = flag;
      this.need = size;
      this.state = size > 0 ? 'long' : 'header';
      if (size === 0) this.need = 512;
      return;
    }
    let name = cstr(b, 0, 100);
    const magic = b.toString('latin1', 257, 263);
    if (magic === 'ustar\0' && b[345] !== 0) name = `${cstr(b, 345, 155)}/${name}`;
    let linkname = cstr(b, 157, 100);
    let uid = num(b, 108, 8, 'uid');
    let gid = num(b, 116, 8, 'gid');
    let mtime = num(b, 136, 12, 'mtime');
    if (this.gnuName !== undefined) name = this.gnuName;
    if (this.gnuLink !== undefined) linkname = this.gnuLink;
    this.gnuName = this.gnuLink = undefined;
    const pax: Pax = { ...this.paxGlobal, ...this.pax };
    this.pax = undefined;
    if (pax.path !== undefined) name = pax.path;
    if (pax.linkpath !== undefined) linkname = pax.linkpath;
    if (pax.size !== undefined && Number.isSafeInteger(pax.size)) size = pax.size;
    if (pax.uid !== undefined && Number.isSafeInteger(pax.uid)) uid = pax.uid;
    if (pax.gid !== undefined && Number.isSafeInteger(pax.gid)) gid = pax.gid;
    if (pax.mtime !== undefined && Number.isFinite(pax.mtime)) mtime = pax.mtime;
    this.lastName = name;
    const padding = (512 - (size % 512)) % 512;
    if (flag === 'V') {
      this.skip(size, padding);
      return;
    }
    const type = TYPES[flag];
    if (!type || pax.sparse || flag === 'S') {
      throw new PullError('unsupported', `tar entry ${JSON.stringify(name)}: unsupported type ${JSON.stringify(flag)}${pax.sparse || flag === 'S' ? ' (sparse file)' : ''}`);
    }
    const h: TarHeader = {
      name,
      linkname,
      type,
      size: type === 'file' ? size : 0,
      mode: num(b, 100, 8, 'mode') & 0o7777,
      uid,
      gid,
      mtime,
      devmajor: type === 'char' || type === 'block' ? num(b, 329, 8, 'devmajor') : 0,
      devminor: type === 'char' || type === 'block' ? num(b, 337, 8, 'devminor') : 0,
      xattrs: pax.xattrs,
    };
    const r = this.sink.entry(h);
    if (r) await r;
    if (type === 'file') {
      if (size === 0) {
        const e = this.sink.end();
        if (e) await e;
        this.skip(0, padding);
      } else {
        this.inFile = true;
        this.state = 'data';
        this.remaining = size;
        this.padding = padding;
      }
    } else {
      this.skip(size, padding);
    }
  }

  private skip(size: number, padding: number): void {
    const n = size + padding;
    this.state = n > 0 ? 'skip' : 'header';
    this.remaining = n;
    this.padding = 0;
  }
}
