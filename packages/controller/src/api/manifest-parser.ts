// Pod manifests are parsed off the event loop. YAML parsing is the largest synchronous cost of
// an apply: at 10,000 pods applied 64 at a time, one HTTP/2 read dispatched dozens of applies
// whose parses ran back to back, and every reconcile waiting behind them paid for it (reconcile
// p99 over the 100 ms goal; measured with bench:controller --only scale). A worker thread moves
// that work to another core; the event loop only posts text and receives plain objects.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ManifestError, podFromManifest, type PodManifest } from '@cello/proto';

export interface ParseRequest {
  id: number;
  text: string;
  namespace: string;
}
export type ParseReply = { id: number; ok: PodManifest } | { id: number; manifestError: { field: string; problem: string; document?: number } } | { id: number; error: string };

interface Pending {
  worker: Worker;
  resolve: (m: PodManifest) => void;
  reject: (e: Error) => void;
}

/** The compiled worker beside this file; absent when running from TypeScript sources (tests). */
const DEFAULT_WORKER = new URL('./manifest-worker.js', import.meta.url);

export class ManifestParser {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private turn = 0;
  private closed = false;

  /**
   * `threads`: 0 parses on the calling thread (the fallback when the worker script is not
   * built). Default: one per spare core, at most 2 — an apply is small, the point is only to
   * keep it off the event loop.
   */
  constructor(opts: { threads?: number; workerUrl?: URL } = {}) {
    const url = opts.workerUrl ?? DEFAULT_WORKER;
    const threads = existsSync(fileURLToPath(url)) ? (opts.threads ?? Math.max(1, Math.min(2, availableParallelism() - 1))) : 0;
    for (let i = 0; i < threads; i++) this.workers.push(this.spawn(url));
  }

  get threads(): number {
    return this.workers.length;
  }

  parse(text: string, defaults: { namespace: string }): Promise<PodManifest> {
    if (this.closed) return Promise.reject(new Error('manifest parser is closed'));
    if (this.workers.length === 0) return new Promise((resolve) => resolve(podFromManifest(text, defaults)));
    const id = this.nextId++;
    const w = this.workers[this.turn++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { worker: w, resolve, reject });
      w.postMessage({ id, text, namespace: defaults.namespace } satisfies ParseRequest);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
    this.fail(new Error('manifest parser is closed'));
  }

  private spawn(url: URL): Worker {
    const w = new Worker(url);
    // Idle workers must not keep a CLI or a test process alive.
    w.unref();
    w.on('message', (r: ParseReply) => this.settle(r));
    // A worker that dies takes its in-flight parses with it: fail them (the caller sees an
    // error, not a hang) and start a replacement so later applies still have a thread.
    w.on('error', (err) => this.replace(w, url, err));
    w.on('exit', (code) => {
      if (!this.closed) this.replace(w, url, new Error(`manifest parser thread exited with code ${code}`));
    });
    return w;
  }

  private replace(w: Worker, url: URL, err: Error): void {
    const i = this.workers.indexOf(w);
    if (i < 0 || this.closed) return;
    this.fail(err, w);
    this.workers[i] = this.spawn(url);
  }

  /** Rejects the parses in flight on `worker` (all of them when none is given). */
  private fail(err: Error, worker?: Worker): void {
    for (const [id, p] of this.pending) {
      if (worker && p.worker !== worker) continue;
      this.pending.delete(id);
      p.reject(err);
    }
  }

  private settle(r: ParseReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if ('ok' in r) p.resolve(r.ok);
    else if ('manifestError' in r) p.reject(new ManifestError(r.manifestError.field, r.manifestError.problem, r.manifestError.document));
    else p.reject(new Error(r.error));
  }
}
