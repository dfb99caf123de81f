// A push-fed async iterable: the backends push events as they commit, the consumer pulls with
// `for await`. The queue is unbounded on purpose — a watcher must never make a writer wait —
// and ends when the consumer's signal aborts (clean end) or the backend fails (thrown error).
import type { WatchEvent } from './store.js';

export class WatchStream<T> implements AsyncIterable<WatchEvent<T>> {
  private readonly queue: WatchEvent<T>[] = [];
  private wake: (() => void) | undefined;
  private done = false;
  private error: Error | undefined;
  private onEnd: (() => void) | undefined;

  constructor(signal: AbortSignal, onEnd?: () => void) {
    this.onEnd = onEnd;
    if (signal.aborted) this.end();
    else signal.addEventListener('abort', () => this.end(), { once: true });
  }

  get ended(): boolean {
    return this.done;
  }

  push(ev: WatchEvent<T>): void {
    if (this.done) return;
    this.queue.push(ev);
    this.wake?.();
  }

  end(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.wake?.();
    const cb = this.onEnd;
    this.onEnd = undefined;
    cb?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent<T>> {
    try {
      for (;;) {
        while (this.queue.length > 0) yield this.queue.shift()!;
        if (this.done) {
          if (this.error) throw this.error;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      // The consumer broke out of its loop: stop feeding this stream.
      this.end();
    }
  }
}
