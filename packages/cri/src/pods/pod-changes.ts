// Wakes the shim's waits (a sandbox's cell up, a container running, a pod gone) as soon as the
// controller reports a change of that pod, instead of at the next poll: one WatchPods stream of
// every namespace the shim may watch. The wait still reads the pod with GetPod (the truth is
// never the event's copy), so a watch that is refused, breaks or lags only makes the wait fall
// back to its poll interval. Each pod's changes are counted: a change between the read and the
// wait is not missed. The same counts let PodService reuse a read of a pod while the watch says
// it has not changed since (the kubelet's relist reads one pod several times in a row).
import { Metadata, type ClientReadableStream } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { errMsg } from '@cello/proto';
import { WatchPodsRequest, type PodEvent } from '@cello/proto/controller';
import type { ControllerApiClient } from '@cello/controller/client';

/** How long a broken watch waits before it is opened again. */
const RETRY_MS = 5000;

const key = (ns: string, name: string) => `${ns}/${name}`;

export class PodChanges {
  private readonly seen = new Map<string, number>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private stream: ClientReadableStream<PodEvent> | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  /** Bumped whenever the stream breaks: changes may have been missed since. */
  private epochNo = 0;
  /** The stream is delivering (it has sent an event since it was last opened). */
  private delivering = false;

  constructor(
    private readonly controller: ControllerApiClient,
    private readonly logger: Logger,
  ) {
    this.open();
  }

  private open(): void {
    if (this.closed) return;
    const s = this.controller.client.watchPods(WatchPodsRequest.fromPartial({ namespace: '' }), new Metadata());
    this.stream = s;
    s.on('data', (ev: PodEvent) => {
      this.delivering = true;
      const m = ev.pod?.metadata;
      if (m) this.bump(key(m.namespace, m.name));
    });
    // An error or an end (both, for some breaks): opened again once, after RETRY_MS.
    const lost = (err?: Error) => {
      this.broken();
      if (this.closed || this.stream !== s) return;
      if (err) this.logger.debug({ err: errMsg(err) }, 'watching the pods failed; waits poll until it is back');
      this.stream = undefined;
      this.retry = setTimeout(() => this.open(), RETRY_MS);
      this.retry.unref();
    };
    s.on('error', (err: Error) => lost(err));
    s.on('end', () => lost());
  }

  private broken(): void {
    this.delivering = false;
    this.epochNo++;
  }

  /**
   * A token for "no change of this pod since now", or undefined when the watch cannot vouch for
   * it (not delivering). `unchanged(token)` is true while the pod had no change and the stream
   * did not break: a read of the pod made after taking the token is still current.
   */
  token(ns: string, name: string): string | undefined {
    return this.delivering ? `${this.epochNo}:${this.count(ns, name)}` : undefined;
  }

  unchanged(ns: string, name: string, token: string | undefined): boolean {
    return token !== undefined && token === this.token(ns, name);
  }

  private bump(k: string): void {
    this.seen.set(k, (this.seen.get(k) ?? 0) + 1);
    const w = this.waiters.get(k);
    if (!w) return;
    this.waiters.delete(k);
    for (const wake of w) wake();
  }

  /** How many changes of the pod were seen so far (read before reading the pod). */
  count(ns: string, name: string): number {
    return this.seen.get(key(ns, name)) ?? 0;
  }

  /** Resolves on the pod's next change after `since` (at once if there was one), after `ms`, or on abort. */
  next(ns: string, name: string, since: number, ms: number, signal: AbortSignal): Promise<void> {
    const k = key(ns, name);
    if (this.count(ns, name) > since || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.waiters.get(k)?.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
      let set = this.waiters.get(k);
      if (!set) this.waiters.set(k, (set = new Set()));
      set.add(done);
    });
  }

  /** Forgets a pod that is gone (its counter and waiters). */
  forget(ns: string, name: string): void {
    const k = key(ns, name);
    this.seen.delete(k);
    const w = this.waiters.get(k);
    this.waiters.delete(k);
    for (const wake of w ?? []) wake();
  }

  close(): void {
    this.closed = true;
    this.broken();
    clearTimeout(this.retry);
    this.stream?.cancel();
    this.stream = undefined;
  }
}
