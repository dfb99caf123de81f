import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { PullError } from './errors.js';

/**
 * sha256 of a stream, computed on a worker thread. Node runs the fetch (TLS), the tar parsing and
 * every file-system call of a pull on its main thread, and hashing a layer twice there (the blob
 * digest of the compressed bytes, the DiffID of the uncompressed tar) was its largest single cost
 * (bench/pull's CPU profile of a cold HTTPS pull: 0.19 s of 0.8 s). Bytes are copied into owned
 * 1 MiB blocks and transferred to the worker (one memcpy, ~20 times cheaper than hashing them);
 * the digest is still checked by the caller exactly as before.
 */

/** Bytes copied per message to the worker. */
const BLOCK = 1 << 20;
/** Bytes sent but not yet hashed before update() asks its caller to wait (bounds memory when the worker lags: the pull's peak RSS goal is 150 MiB). */
const MAX_IN_FLIGHT = 2 * BLOCK;
/** Blocks kept for reuse across the process's hashes. */
const FREE_BLOCKS = 4;

// Plain CommonJS run by `new Worker(..., { eval: true })`: no separate file to ship beside the CLI bundle.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
parentPort.on('message', (m) => {
  if (m.op === 'update') {
    let h = hashes.get(m.id);
    if (!h) hashes.set(m.id, (h = createHash('sha256')));
    h.update(new Uint8Array(m.block, 0, m.length));
    parentPort.postMessage({ op: 'hashed', id: m.id, length: m.length, block: m.block }, [m.block]);
  } else if (m.op === 'digest') {
    const h = hashes.get(m.id) ?? createHash('sha256');
    hashes.delete(m.id);
    parentPort.postMessage({ op: 'digest', id: m.id, hex: h.digest('hex') });
  } else if (m.op === 'drop') {
    hashes.delete(m.id);
  }
});
`;

interface Pending {
  inFlight: number;
  /** Set while the sender waits for the worker to catch up. */
  drained: (() => void) | undefined;
  wait: Promise<void> | undefined;
  digest: { resolve: (hex: string) => void; reject: (e: Error) => void } | undefined;
}

/** The worker shared by every hash of this process; started on first use, kept alive only while a digest is awaited. */
class HashWorker {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private waiting = 0;
  /** Blocks the worker handed back: reused, as touching fresh memory (page faults) cost more than the copy. */
  private readonly free: ArrayBuffer[] = [];

  block(): Buffer {
    const ab = this.free.pop();
    return ab ? Buffer.from(ab) : Buffer.allocUnsafeSlow(BLOCK);
  }

  private get(): Worker {
    if (this.worker) return this.worker;
    // A small heap: the worker holds only message envelopes (the blocks are off-heap), and its
    // memory counts against the pull's peak RSS.
    const w = new Worker(WORKER_SOURCE, { eval: true, name: 'cello-sha256', resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 16 } });
    w.unref();
    w.on('message', (m: { op: string; id: number; length?: number; hex?: string; block?: ArrayBuffer }) => {
      if (m.block && this.free.length < FREE_BLOCKS) this.free.push(m.block);
      const p = this.pending.get(m.id);
      if (!p) return;
      if (m.op === 'hashed') {
        p.inFlight -= m.length!;
        if (p.inFlight <= MAX_IN_FLIGHT / 2) p.drained?.();
      } else if (m.op === 'digest') {
        this.pending.delete(m.id);
        this.release();
        p.digest?.resolve(m.hex!);
      }
    });
    const fail = (e: Error): void => {
      if (this.worker !== w) return;
      this.worker = undefined;
      const err = new PullError('integrity', `sha256 worker failed: ${e.message}`, { cause: e });
      for (const p of this.pending.values()) {
        p.drained?.();
        if (p.digest) {
          this.release();
          p.digest.reject(err);
        }
      }
      this.pending.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
    this.worker = w;
    return w;
  }

  /** A digest is awaited: keep the process alive until it arrives. */
  private hold(): void {
    if (this.waiting++ === 0) this.worker?.ref();
  }

  private release(): void {
    if (--this.waiting === 0) this.worker?.unref();
  }

  open(): number {
    this.get();
    const id = this.nextId++;
    this.pending.set(id, { inFlight: 0, drained: undefined, wait: undefined, digest: undefined });
    return id;
  }

  /** Sends a block (transferred: the caller must not touch it again); resolves when the worker has caught up enough. */
  send(id: number, block: Buffer, length: number): Promise<void> | undefined {
    const p = this.pending.get(id);
    if (!p || !this.worker) throw new PullError('integrity', 'sha256 worker failed: it stopped while hashing');
    p.inFlight += length;
    const ab = block.buffer as ArrayBuffer;
    this.worker.postMessage({ op: 'update', id, block: ab, length }, [ab]);
    if (p.inFlight <= MAX_IN_FLIGHT || p.wait) return p.wait;
    this.hold();
    p.wait = new Promise<void>((resolve) => {
      p.drained = () => {
        p.drained = p.wait = undefined;
        this.release();
        resolve();
      };
    });
    return p.wait;
  }

  digest(id: number): Promise<string> {
    const p = this.pending.get(id);
    if (!p || !this.worker) return Promise.reject(new PullError('integrity', 'sha256 worker failed: it stopped while hashing'));
    this.hold();
    return new Promise<string>((resolve, reject) => {
      p.digest = { resolve, reject };
      this.worker!.postMessage({ op: 'digest', id });
    });
  }

  drop(id: number): void {
    if (!this.pending.delete(id)) return;
    this.worker?.postMessage({ op: 'drop', id });
  }
}

const shared = new HashWorker();

/** A streaming sha256 whose hashing runs on the shared worker thread. */
export class OffThreadSha256 implements StreamHash {
  private readonly id = shared.open();
  private block = shared.block();
  private used = 0;
  private finished = false;

  /**
   * Adds bytes (copied: the caller may reuse `chunk`). Returns a promise when the worker is more
   * than MAX_IN_FLIGHT behind: await it before sending more.
   */
  update(chunk: Uint8Array): Promise<void> | undefined {
    let off = 0;
    let wait: Promise<void> | undefined;
    while (off < chunk.length) {
      const n = Math.min(BLOCK - this.used, chunk.length - off);
      this.block.set(chunk.subarray(off, off + n), this.used);
      this.used += n;
      off += n;
      if (this.used === BLOCK) wait = this.flush() ?? wait;
    }
    return wait;
  }

  private flush(): Promise<void> | undefined {
    if (this.used === 0) return undefined;
    const block = this.block;
    const n = this.used;
    this.block = shared.block();
    this.used = 0;
    return shared.send(this.id, block, n);
  }

  /** `sha256:<hex>` of everything added. */
  async digest(): Promise<string> {
    if (this.finished) throw new Error('digest() after digest() or dispose()');
    this.finished = true;
    await this.flush();
    return `sha256:${await shared.digest(this.id)}`;
  }

  /** Abandons the hash (an aborted transfer) and frees its state in the worker. */
  dispose(): void {
    if (this.finished) return;
    this.finished = true;
    shared.drop(this.id);
  }
}

/** A streaming sha256: update() may ask the caller to wait; digest() gives `sha256:<hex>`. */
export interface StreamHash {
  update(chunk: Uint8Array): Promise<void> | undefined;
  digest(): Promise<string>;
  dispose(): void;
}

/**
 * The same on the calling thread. When the main thread has nothing else to do while zlib
 * inflates (a layer read from the cache), a third busy thread on two cores cost more than it
 * saved: a warm pull to a rootfs took ~0.1-0.2 s longer with the worker (bench/pull, interleaved).
 */
export class InThreadSha256 implements StreamHash {
  private readonly h = createHash('sha256');
  update(chunk: Uint8Array): undefined {
    this.h.update(chunk);
    return undefined;
  }
  digest(): Promise<string> {
    return Promise.resolve(`sha256:${this.h.digest('hex')}`);
  }
  dispose(): void {}
}
