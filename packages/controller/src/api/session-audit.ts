// The controller's record of every exec, attach and port-forward session it relays: who (as
// authenticated here), when, which pod and cell, the command or port, and how it ended (the exit
// code the agent sent, or the error). Kept in the store, so it outlives the cell (the agent's own
// audit log, with transcripts, dies with it) and any controller replica can list it.
import { AuditSession, type PodRef } from '@cello/proto/controller';
import type { Store } from '../store/store.js';
import { errMsg } from '../util/errors.js';
import type { Logger } from '../obs/logger.js';

export const AUDIT = 'audit/';
/** Sessions kept; the oldest beyond are deleted (an operator wanting more ships the store or logs). */
export const MAX_AUDIT_SESSIONS = 2000;

export interface OpenSession {
  /** What the first frame said: container and command (exec/attach), port (port-forward). */
  started(what: { container?: string; command?: string[]; port?: number }): void;
  exited(exit: { exitCode: number; signal: string }): void;
  /** The session is over (stream ended, failed or was cancelled); `error` when not cleanly. */
  finish(error?: string): void;
}

export class SessionAudit {
  private seq = 0;
  private pruning = false;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly max = MAX_AUDIT_SESSIONS,
  ) {}

  open(kind: 'exec' | 'attach' | 'portforward', user: string, pod: PodRef, cellId: string): OpenSession {
    const now = new Date();
    const id = `${now.getTime().toString().padStart(15, '0')}-${(this.seq++ % 1e6).toString().padStart(6, '0')}`;
    const key = `${AUDIT}${pod.namespace || 'default'}/${pod.name}/${id}`;
    const s = AuditSession.fromPartial({ id, kind, user, pod: { namespace: pod.namespace || 'default', name: pod.name }, cellId, startedAt: now });
    // Writes go out in order, one at a time: the last one (the end) always wins.
    let chain: Promise<unknown> = Promise.resolve();
    const write = () => {
      const snapshot = AuditSession.toJSON(s);
      chain = chain.then(() => this.store.put(key, snapshot)).catch((err) => this.log.warn({ err: errMsg(err), session: id }, 'audit record not written'));
      return chain;
    };
    let done = false;
    return {
      started: (w) => {
        if (w.container !== undefined) s.container = w.container;
        if (w.command) s.command = w.command;
        if (w.port !== undefined) s.port = w.port;
        void write();
      },
      exited: (e) => {
        s.exited = true;
        s.exitCode = e.exitCode;
        s.signal = e.signal;
      },
      finish: (error) => {
        if (done) return;
        done = true;
        s.finishedAt = new Date();
        if (error) s.error = error;
        void write().then(() => this.prune());
      },
    };
  }

  /** Newest last; `pod.name` empty: the namespace; `pod` absent or namespace empty: all. */
  async list(pod?: PodRef, limit = 0): Promise<AuditSession[]> {
    const prefix = !pod?.namespace ? AUDIT : pod.name ? `${AUDIT}${pod.namespace}/${pod.name}/` : `${AUDIT}${pod.namespace}/`;
    const { items } = await this.store.list<unknown>(prefix);
    const all = items.map((kv) => AuditSession.fromJSON(kv.value)).sort((a, b) => a.id.localeCompare(b.id));
    return limit > 0 ? all.slice(-limit) : all;
  }

  private async prune(): Promise<void> {
    if (this.pruning) return;
    this.pruning = true;
    try {
      const { items } = await this.store.list<{ id?: string }>(AUDIT);
      if (items.length <= this.max) return;
      const oldest = items.sort((a, b) => String(a.value.id).localeCompare(String(b.value.id))).slice(0, items.length - this.max);
      for (const kv of oldest) await this.store.delete(kv.key);
    } catch (err) {
      this.log.warn({ err: errMsg(err) }, 'audit pruning failed');
    } finally {
      this.pruning = false;
    }
  }
}
