// Starting agents in the test process (fast) and following their status through WatchStatus.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { type ClientReadableStream } from '@grpc/grpc-js';
import { ApplyPodRequest, type CellAgentClient, type ContainerStatus, type Event, type GetStatusResponse, type WatchStatusEvent, Pod } from '@cello/proto/cell';
import { startAgent, type Agent, type AgentOptions } from '../../src/agent.js';
import { connectAgent } from '../../src/ctl/client.js';
import type { ImageService } from '../../src/images/image-service.js';

export const FAST_BACKOFF = { baseMs: 300, maxMs: 2000, resetAfterMs: 60_000 };

export interface TestAgent {
  agent: Agent;
  client: CellAgentClient;
  stateDir: string;
  watch: StatusWatch;
  stop(): Promise<void>;
}

export async function startTestAgent(images: ImageService | undefined, extra: Partial<AgentOptions> = {}): Promise<TestAgent> {
  const ownStateDir = extra.stateDir === undefined;
  const stateDir = extra.stateDir ?? mkdtempSync(join(tmpdir(), 'cello-agent-'));
  const id = Math.random().toString(36).slice(2, 8);
  const agent = await startAgent({
    listen: '127.0.0.1:0',
    stateDir,
    tls: undefined,
    logger: pino({ level: process.env.TEST_LOG ?? 'silent' }),
    ...(images ? { images } : {}),
    cgroupParent: `/cello-test/${id}`,
    backoff: FAST_BACKOFF,
    probeSecondMs: 200,
    heartbeatMs: 1000,
    ...extra,
  });
  const client = connectAgent(agent.address, undefined);
  const watch = new StatusWatch(client);
  await watch.ready;
  return {
    agent,
    client,
    stateDir,
    watch,
    stop: async () => {
      watch.close();
      await new Promise<void>((r) => client.deletePod({ gracePeriodSeconds: 0 }, () => r()));
      client.close();
      await agent.close();
      const { rmSync } = await import('node:fs');
      rmSync(agent.runDir, { recursive: true, force: true });
      // A state dir the test passed in is the test's to inspect and remove.
      if (ownStateDir) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export function apply(client: CellAgentClient, req: Partial<ApplyPodRequest> & { pod: Pod }): Promise<{ generation: number; changedUnits: string[] }> {
  return new Promise((resolve, reject) => client.applyPod(ApplyPodRequest.fromPartial({ generation: Date.now(), ...req }), (err, r) => (err ? reject(err) : resolve(r))));
}

export function getStatus(client: CellAgentClient): Promise<GetStatusResponse> {
  return new Promise((resolve, reject) => client.getStatus({}, (err, r) => (err ? reject(err) : resolve(r))));
}

/** Collects every WatchStatus message and lets a test wait for a condition with a deadline. */
export class StatusWatch {
  last: GetStatusResponse | undefined;
  readonly events: Event[] = [];
  readonly history: GetStatusResponse[] = [];
  readonly ready: Promise<void>;
  private waiters: { pred: () => boolean; resolve: () => void }[] = [];
  private stream: ClientReadableStream<WatchStatusEvent>;

  constructor(client: CellAgentClient) {
    this.stream = client.watchStatus({});
    let first: () => void;
    this.ready = new Promise((r) => (first = r));
    this.stream.on('data', (e: WatchStatusEvent) => {
      if (e.kind?.$case === 'status') {
        this.last = e.kind.value;
        this.history.push(e.kind.value);
        first();
      } else if (e.kind?.$case === 'event') this.events.push(e.kind.value);
      this.check();
    });
    this.stream.on('error', () => {});
  }

  private check(): void {
    for (const w of [...this.waiters]) {
      if (w.pred()) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  unit(name: string): ContainerStatus | undefined {
    const s = this.last?.status;
    return [...(s?.containerStatuses ?? []), ...(s?.initContainerStatuses ?? []), ...(s?.ephemeralContainerStatuses ?? [])].find((c) => c.name === name);
  }

  /** Waits until pred holds on the latest status (or events); fails after timeoutMs with what was seen. */
  // 40 s by default: it only bounds a failure, and a busy CI machine took over 15 s for a pod that
  // passes in 2 s alone.
  until(what: string, pred: (w: StatusWatch) => boolean, timeoutMs = 40_000): Promise<void> {
    if (pred(this)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; last status: ${JSON.stringify(this.summary())}; events: ${this.events
              .slice(-8)
              .map((e) => `${e.container}:${e.reason}:${e.message}`)
              .join(' | ')}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      this.waiters.push({ pred: () => pred(this), resolve: done });
    });
  }

  summary(): unknown {
    const s = this.last?.status;
    if (!s) return 'no pod';
    const one = (c: ContainerStatus) => {
      const st = c.state?.state;
      return `${c.name}:${st?.$case}${st?.$case === 'waiting' ? `(${st.value.reason}: ${st.value.message})` : st?.$case === 'terminated' ? `(${st.value.reason} ${st.value.exitCode} ${st.value.message})` : ''} r=${c.restartCount} ready=${c.ready}`;
    };
    return { phase: s.phase, init: s.initContainerStatuses.map(one), units: s.containerStatuses.map(one), ephemeral: s.ephemeralContainerStatuses.map(one) };
  }

  running(name: string): boolean {
    return this.unit(name)?.state?.state?.$case === 'running';
  }

  terminated(name: string): { exitCode: number; reason: string; message: string } | undefined {
    const st = this.unit(name)?.state?.state;
    return st?.$case === 'terminated' ? st.value : undefined;
  }

  waiting(name: string): { reason: string; message: string } | undefined {
    const st = this.unit(name)?.state?.state;
    return st?.$case === 'waiting' ? st.value : undefined;
  }

  close(): void {
    this.stream.cancel();
  }
}

export function pod(name: string, spec: Record<string, unknown>): Pod {
  return Pod.fromPartial({ metadata: { name, namespace: 'default', uid: `uid-${name}-${Date.now()}` }, spec: spec as never });
}
