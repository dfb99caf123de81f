// List-then-watch cache of one kind of object (client-go's reflector + store): lists, watches
// from the list's resourceVersion with bookmarks, and relists on 410 Gone or a broken watch
// (with back-off). Every change calls onChange with the object's namespace/name key.
import type { KubeRest } from './rest.js';
import { isGone } from './rest.js';
import { Backoff } from '../../util/backoff.js';

/** Relist/rewatch after a failure: 200 ms doubling to 10 s, from the start again once events arrive. */
const INFORMER_RETRY = { baseMs: 200, maxMs: 10_000 };

export interface KubeObject {
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; deletionTimestamp?: string; [k: string]: unknown };
}

export const keyOf = (o: KubeObject) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`;

export class Informer<T extends KubeObject> {
  readonly cache = new Map<string, T>();
  private readonly ac = new AbortController();
  private synced!: () => void;
  readonly hasSynced = new Promise<void>((r) => (this.synced = r));
  private loop?: Promise<void>;

  constructor(
    private readonly rest: KubeRest,
    /** e.g. /api/v1/pods */
    private readonly path: string,
    /** e.g. fieldSelector=spec.nodeName%3Dnode */
    private readonly query: string,
    private readonly onChange: (key: string, obj: T | undefined, old: T | undefined) => void,
    private readonly onError: (err: unknown) => void,
  ) {}

  start(): void {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const backoff = new Backoff(INFORMER_RETRY);
    while (!this.ac.signal.aborted) {
      try {
        const list = await this.rest.get<{ metadata: { resourceVersion: string }; items: T[] }>(`${this.path}?${this.query}`);
        const seen = new Set<string>();
        for (const o of list.items) {
          const k = keyOf(o);
          seen.add(k);
          const old = this.cache.get(k);
          this.cache.set(k, o);
          if (old?.metadata.resourceVersion !== o.metadata.resourceVersion) this.onChange(k, o, old);
        }
        for (const [k, old] of [...this.cache]) {
          if (!seen.has(k)) {
            this.cache.delete(k);
            this.onChange(k, undefined, old);
          }
        }
        this.synced();
        let rv = list.metadata.resourceVersion;
        for (;;) {
          if (this.ac.signal.aborted) return;
          await this.rest.watch<T>(
            `${this.path}?${this.query}&watch=1&allowWatchBookmarks=true&resourceVersion=${rv}&timeoutSeconds=300`,
            (ev) => {
              backoff.reset();
              if (ev.object.metadata?.resourceVersion) rv = ev.object.metadata.resourceVersion;
              if (ev.type === 'BOOKMARK') return;
              const k = keyOf(ev.object);
              const old = this.cache.get(k);
              if (ev.type === 'DELETED') {
                this.cache.delete(k);
                this.onChange(k, undefined, old ?? ev.object);
              } else {
                this.cache.set(k, ev.object);
                this.onChange(k, ev.object, old);
              }
            },
            this.ac.signal,
          );
        }
      } catch (err) {
        if (this.ac.signal.aborted) return;
        if (!isGone(err)) this.onError(err);
        await new Promise((r) => setTimeout(r, backoff.next()));
      }
    }
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.loop?.catch(() => undefined);
  }
}
