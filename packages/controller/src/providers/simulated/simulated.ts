// A SIMULATION for scale benchmarks, never for production: a provider whose "instances" are
// records in memory, and in-process stand-ins for their agents that accept ApplyPod and report
// the pod Running. It lets the benchmark drive the real controller core (store, reconciler,
// API) with 10,000 cells on one small machine; it measures the controller, not cells.
import { EventEmitter } from 'node:events';
import { Metadata, status as Status } from '@grpc/grpc-js';
import {
  ApplyPodResponse,
  CellNotice,
  AgentInfo,
  DeletePodResponse,
  GetStatusResponse,
  PodPhase,
  PodStatus,
  ConditionStatus,
  WatchStatusEvent,
  type ApplyPodRequest,
  type CellAgentClient,
} from '@cello/proto/cell';
import {
  CapacityError,
  UnknownInstanceTypeError,
  type CellProvider,
  type InstanceInfo,
  type InstanceType,
  type LaunchRequest,
  type LaunchedInstance,
  type ProviderCapacity,
} from '../provider.js';

export interface SimulatedProviderOptions {
  types: InstanceType[];
  /** Simulated launch latency, ms. */
  launchMs?: number;
  /** Simulated time from ApplyPod to Running, ms. */
  startMs?: number;
  /**
   * Most cells at once, like a cloud account's instance limit: launches beyond it fail with
   * CapacityError, and capacity() reports it. Default 100,000 (ten times the scale benchmark).
   */
  maxCells?: number;
}

const DEFAULT_MAX_CELLS = 100_000;

interface SimInstance {
  info: InstanceInfo;
  cellId: string;
}

export class SimulatedProvider implements CellProvider {
  readonly name = 'simulated';
  readonly needsBootstrap = false;
  private readonly instances = new Map<string, SimInstance>();
  private readonly agents = new Map<string, SimulatedAgent>();
  private seq = 0;

  constructor(private readonly o: SimulatedProviderOptions) {}

  async instanceTypes(): Promise<InstanceType[]> {
    return this.o.types;
  }

  async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    if (!this.o.types.some((t) => t.name === req.instanceType))
      throw new UnknownInstanceTypeError(`instanceType: "${req.instanceType}" is not a simulated instance type`, req.instanceType);
    if (this.o.launchMs) await new Promise((r) => setTimeout(r, this.o.launchMs));
    // Checked after the launch delay, with no await before the instance is recorded: concurrent launches never pass the limit.
    if (this.instances.size >= this.maxCells) throw new CapacityError(`simulated provider is at its limit of ${this.maxCells} cells`, req.instanceType);
    const instanceId = `sim-${(++this.seq).toString(36)}`;
    this.instances.set(instanceId, {
      cellId: req.cellId,
      info: {
        instanceId,
        state: 'running',
        agentAddress: `sim:${req.cellId}`,
        tags: { ...req.tags },
        instanceType: req.instanceType,
        launchedAt: new Date(),
        spot: req.spot,
        zone: 'sim',
      },
    });
    this.agents.set(req.cellId, new SimulatedAgent(req.cellId, this.o.startMs ?? 0));
    return { instanceId, spot: req.spot, zone: 'sim' };
  }

  async describe(ids: string[]): Promise<InstanceInfo[]> {
    return ids.map((i) => this.instances.get(i)?.info).filter((x): x is InstanceInfo => !!x);
  }

  async listOwned(controllerId: string): Promise<InstanceInfo[]> {
    return [...this.instances.values()].filter((i) => i.info.tags['cello.io/controller-id'] === controllerId).map((i) => i.info);
  }

  /** The simulated account: its cell limit, and every cell not yet terminated. */
  async capacity(): Promise<ProviderCapacity> {
    return { instances: { limit: this.maxCells, used: this.instances.size }, source: 'simulated' };
  }

  private get maxCells(): number {
    return this.o.maxCells ?? DEFAULT_MAX_CELLS;
  }

  async terminate(ids: string[]): Promise<void> {
    for (const id of ids) {
      const i = this.instances.get(id);
      if (!i) continue;
      this.instances.delete(id);
      this.agents.get(i.cellId)?.close();
      this.agents.delete(i.cellId);
    }
  }

  async close(): Promise<void> {
    for (const a of this.agents.values()) a.close();
  }

  /** Agent pool for the reconciler: hands out the in-process simulated agents. */
  agentPool() {
    return {
      get: (cellId: string): CellAgentClient => {
        const a = this.agents.get(cellId);
        if (!a) throw new Error(`simulated cell ${cellId} has no agent`);
        return a as unknown as CellAgentClient;
      },
      drop: (_cellId: string) => undefined,
      closeAll: () => undefined,
    };
  }

  get size(): number {
    return this.instances.size;
  }

  /** The last ApplyPod the simulated agent of a cell received (tests: what was dispatched). */
  lastApply(cellId: string): ApplyPodRequest | undefined {
    return this.agents.get(cellId)?.lastApply;
  }

  /** What the agent on a cell would report from the cloud's instance metadata (e.g. a spot interruption). */
  notify(cellId: string, notice: Partial<CellNotice>): void {
    const a = this.agents.get(cellId);
    if (!a) throw new Error(`simulated cell ${cellId} has no agent`);
    a.notice(CellNotice.fromPartial({ time: new Date(), ...notice }));
  }
}

type Cb<T> = (err: Error | null, res: T) => void;

/** Implements the subset of CellAgentClient the reconciler uses, in memory. */
class SimulatedAgent {
  private status = GetStatusResponse.fromPartial({ generation: 0 });
  private readonly streams = new Set<EventEmitter & { cancel(): void }>();

  constructor(
    private readonly cellId: string,
    private readonly startMs: number,
  ) {}

  getInfo(_req: unknown, _md: Metadata, _o: unknown, cb: Cb<AgentInfo>): void {
    setImmediate(() => cb(null, AgentInfo.fromPartial({ version: 'simulated', cellId: this.cellId })));
  }

  lastApply?: ApplyPodRequest;

  applyPod(req: ApplyPodRequest, _md: Metadata, _o: unknown, cb: Cb<ApplyPodResponse>): void {
    this.lastApply = req;
    const containers = req.pod?.spec?.containers ?? [];
    setImmediate(() => cb(null, ApplyPodResponse.fromPartial({ generation: req.generation, changedUnits: containers.map((c) => c.name) })));
    setTimeout(() => {
      const status = PodStatus.fromPartial({
        phase: PodPhase.POD_PHASE_RUNNING,
        observedGeneration: req.generation,
        startTime: new Date(),
        conditions: [{ type: 'Ready', status: ConditionStatus.CONDITION_STATUS_TRUE }],
        containerStatuses: containers.map((c) => ({
          name: c.name,
          image: c.image,
          ready: true,
          started: true,
          state: { state: { $case: 'running' as const, value: { startedAt: new Date() } } },
        })),
      });
      this.status = GetStatusResponse.fromPartial({ status, generation: req.generation, podUid: req.pod?.metadata?.uid ?? '' });
      this.emit();
    }, this.startMs);
  }

  deletePod(_req: unknown, _md: Metadata, _o: unknown, cb: Cb<DeletePodResponse>): void {
    this.status = GetStatusResponse.fromPartial({ generation: 0 });
    setImmediate(() => cb(null, DeletePodResponse.fromPartial({})));
  }

  watchStatus(): EventEmitter {
    const s = Object.assign(new EventEmitter(), { cancel: () => this.streams.delete(s) });
    this.streams.add(s);
    setImmediate(() => {
      s.emit('metadata', new Metadata());
      if (this.status.generation > 0) s.emit('data', WatchStatusEvent.fromPartial({ kind: { $case: 'status', value: this.status } }));
    });
    return s;
  }

  notice(n: CellNotice): void {
    const ev = WatchStatusEvent.fromPartial({ kind: { $case: 'notice', value: n } });
    for (const st of this.streams) st.emit('data', ev);
  }

  private emit(): void {
    const ev = WatchStatusEvent.fromPartial({ kind: { $case: 'status', value: this.status } });
    for (const s of this.streams) s.emit('data', ev);
  }

  close(): void {
    for (const s of this.streams) s.emit('error', Object.assign(new Error('simulated cell terminated'), { code: Status.UNAVAILABLE }));
    this.streams.clear();
  }
}
