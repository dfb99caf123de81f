// The controller's gRPC API (cello.controller.v1.Controller), what cellctl talks to. Writes go
// to the store only (the leader's reconciler acts on them); reads come from the store, so any
// controller replica can serve them; streams (logs, exec, attach, port-forward) are relayed to
// the pod's cell agent frame by frame.
import { randomUUID } from 'node:crypto';
import {
  Server,
  ServerCredentials,
  status as Status,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ClientDuplexStream,
  type sendUnaryData,
  type ServiceError,
  Metadata,
} from '@grpc/grpc-js';
import { ManifestError, podFromManifest } from '@cello/proto';
import { LogsRequest as AgentLogsRequest, ConfigMapData, SecretData, PodStatus, PodPhase, ConditionStatus, type ExecInput, type ExecOutput, type LogChunk, type PortForwardFrame } from '@cello/proto/cell';
import {
  ControllerService,
  Cell,
  CellEvent,
  EventType,
  ListCellsResponse,
  ListEventsResponse,
  ListPodsResponse,
  PodEvent,
  PodObject,
  VersionResponse,
  type ApplyPodRequest,
  type DeletePodRequest,
  type ExecRequest,
  type GetPodRequest,
  type ListCellsRequest,
  type ListEventsRequest,
  type ListPodsRequest,
  type LogsRequest,
  type PodRef,
  type PortForwardRequest,
  type VersionRequest,
  type WatchPodsRequest,
} from '@cello/proto/controller';
import { HealthService } from '@cello/proto';
import { HealthService as HealthCheckService } from '@cello/proto/health';
import type { Store } from '../store/store.js';
import { CELLS, PODS, Events, cellKey, cellOf, podKey, podOf, update, type CellRecord } from '../cells/records.js';
import { CellState } from '../cells/state.js';
import { SelectionError, selectCandidates } from '../selection/selection.js';
import type { InstanceType } from '../providers/provider.js';
import type { AgentAccess } from '../dispatch/agents.js';
import { errMsg, setCondition, type PodRecordWithData } from '../dispatch/reconciler.js';
import { readPodSecrets, writePodSecrets } from '../cells/pod-secrets.js';
import type { SecretBox } from '../security/secret-box.js';
import type { Logger } from '../obs/logger.js';
import { VERSION } from '../version.js';

export interface ApiOptions {
  store: Store;
  agents: AgentAccess;
  log: Logger;
  controllerId: string;
  providerName: string;
  instanceTypes: InstanceType[];
  /** Seals the secrets applied with pods before they reach the store. */
  secretBox?: SecretBox;
}

class ApiError extends Error {
  constructor(readonly code: Status, message: string) {
    super(message);
  }
}

function fail(cb: sendUnaryData<never>, err: unknown): void {
  if (err instanceof ApiError) return cb({ code: err.code, details: err.message, message: err.message, name: 'ApiError', metadata: new Metadata() } as ServiceError, null);
  const se = err as ServiceError;
  if (typeof se?.code === 'number') return cb(se, null);
  cb({ code: Status.INTERNAL, details: errMsg(err), message: errMsg(err), name: 'Error', metadata: new Metadata() } as ServiceError, null);
}

function unary<Req, Res>(fn: (req: Req) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    fn(call.request).then(
      (res) => cb(null, res),
      (err) => fail(cb as sendUnaryData<never>, err),
    );
  };
}

function ns(ref?: PodRef): string {
  return ref?.namespace || 'default';
}

/** Kubernetes-style equality-based label selector: a=b, a!=b, a, !a (comma = and). */
export function matchLabels(selector: string, labels: Record<string, string>): boolean {
  if (!selector.trim()) return true;
  return selector.split(',').every((term) => {
    const t = term.trim();
    if (!t) return true;
    let m;
    if ((m = /^([^!=]+)!=(.*)$/.exec(t))) return labels[m[1]!.trim()] !== m[2]!.trim();
    if ((m = /^([^!=]+)==?(.*)$/.exec(t))) return labels[m[1]!.trim()] === m[2]!.trim();
    if (t.startsWith('!')) return !(t.slice(1).trim() in labels);
    return t in labels;
  });
}

export class ControllerApi {
  private readonly events: Events;
  private server?: Server;

  constructor(private readonly o: ApiOptions) {
    this.events = new Events(o.store);
  }

  async listen(address: string): Promise<number> {
    const server = new Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
    server.addService(ControllerService, this.handlers());
    server.addService(HealthCheckService, new HealthService().implementation);
    this.server = server;
    return new Promise((resolve, reject) =>
      server.bindAsync(address, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
    );
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        s.forceShutdown();
        resolve();
      }, 2000);
      s.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  handlers() {
    return {
      applyPod: unary((r: ApplyPodRequest) => this.applyPod(r)),
      getPod: unary((r: GetPodRequest) => this.getPod(r.pod)),
      listPods: unary((r: ListPodsRequest) => this.listPods(r)),
      watchPods: (call: ServerWritableStream<WatchPodsRequest, PodEvent>) => void this.watchPods(call),
      deletePod: unary((r: DeletePodRequest) => this.deletePod(r)),
      listCells: unary(async (_r: ListCellsRequest) => ListCellsResponse.fromPartial({ cells: await this.listCells() })),
      watchCells: (call: ServerWritableStream<ListCellsRequest, CellEvent>) => void this.watchCells(call),
      logs: (call: ServerWritableStream<LogsRequest, LogChunk>) => void this.logs(call),
      exec: (call: ServerDuplexStream<ExecRequest, ExecOutput>) => this.relayExec(call, 'exec'),
      attach: (call: ServerDuplexStream<ExecRequest, ExecOutput>) => this.relayExec(call, 'attach'),
      portForward: (call: ServerDuplexStream<PortForwardRequest, PortForwardFrame>) => this.relayPortForward(call),
      listEvents: unary(async (r: ListEventsRequest) =>
        ListEventsResponse.fromPartial({ events: await this.events.list(r.pod?.name ? { namespace: ns(r.pod), name: r.pod.name } : undefined, r.limit) }),
      ),
      version: unary(async (_r: VersionRequest) =>
        VersionResponse.fromPartial({
          version: VERSION,
          controllerId: this.o.controllerId,
          store: this.o.store.kind,
          provider: this.o.providerName,
          apiVersions: ['cello.controller.v1', 'v1/Pod'],
        }),
      ),
    };
  }

  // ------------------------------------------------------------ pods

  async applyPod(r: ApplyPodRequest): Promise<PodObject> {
    let parsed;
    try {
      parsed = podFromManifest(r.manifest, { namespace: r.namespace || 'default' });
    } catch (err) {
      if (err instanceof ManifestError) throw new ApiError(Status.INVALID_ARGUMENT, err.message);
      throw new ApiError(Status.INVALID_ARGUMENT, `manifest: ${errMsg(err)}`);
    }
    const pod = parsed.pod;
    const name = pod.metadata?.name ?? '';
    const namespace = pod.metadata?.namespace || r.namespace || 'default';
    if (!name) throw new ApiError(Status.INVALID_ARGUMENT, 'metadata.name: is required');
    try {
      selectCandidates(this.o.instanceTypes, { spec: pod.spec!, annotations: pod.metadata?.annotations ?? {}, overhead: { cpuMillis: 0, memoryBytes: 0 }, defaultSpot: 'never' });
    } catch (err) {
      // Annotations that cannot mean anything are refused; a pod too big for any type is
      // accepted and reported Unschedulable, as Kubernetes does.
      if (err instanceof SelectionError && err.reason !== 'NoFittingInstanceType') throw new ApiError(Status.INVALID_ARGUMENT, err.message);
    }
    const secrets = Object.fromEntries(Object.entries(parsed.secrets).map(([k, v]) => [k, SecretData.toJSON(v)]));
    const configMaps = Object.fromEntries(Object.entries(parsed.configMaps).map(([k, v]) => [k, ConfigMapData.toJSON(v)]));
    let result: PodObject | undefined;
    const build = (cur: PodRecordWithData | undefined): PodRecordWithData | undefined => {
      if (cur?.deleting) throw new ApiError(Status.FAILED_PRECONDITION, `pod ${namespace}/${name} is being deleted; wait until it is gone`);
      if (cur) {
        const obj = podOf(cur);
        const sameSpec = JSON.stringify(obj.spec) === JSON.stringify(pod.spec);
        const sameMeta = JSON.stringify(obj.metadata?.labels) === JSON.stringify(pod.metadata?.labels ?? {}) &&
          JSON.stringify(obj.metadata?.annotations) === JSON.stringify(pod.metadata?.annotations ?? {});
        const storeKey = podKey(namespace, name);
        const sameData = JSON.stringify(readPodSecrets(cur, storeKey, this.o.secretBox)) === JSON.stringify(secrets) && JSON.stringify(cur.configMaps ?? {}) === JSON.stringify(configMaps);
        // A record from before secrets were sealed is rewritten (sealed) even when nothing changed.
        const legacyPlain = this.o.secretBox !== undefined && cur.secrets !== undefined;
        if (sameSpec && sameMeta && sameData && !legacyPlain) {
          result = obj;
          return undefined;
        }
        obj.spec = pod.spec;
        obj.metadata!.labels = pod.metadata?.labels ?? {};
        obj.metadata!.annotations = pod.metadata?.annotations ?? {};
        if (!sameSpec || !sameData) obj.metadata!.generation += 1;
        result = obj;
        return writePodSecrets({ ...cur, object: PodObject.toJSON(obj), configMaps }, secrets, storeKey, this.o.secretBox);
      }
      const status = PodStatus.fromPartial({ phase: PodPhase.POD_PHASE_PENDING });
      setCondition(status, 'PodScheduled', ConditionStatus.CONDITION_STATUS_FALSE, 'Pending', 'waiting for a cell');
      const obj = PodObject.fromPartial({
        metadata: {
          name,
          namespace,
          uid: randomUUID(),
          generation: 1,
          creationTimestamp: new Date(),
          labels: pod.metadata?.labels ?? {},
          annotations: pod.metadata?.annotations ?? {},
        },
        spec: pod.spec,
        status,
      });
      result = obj;
      return writePodSecrets({ object: PodObject.toJSON(obj), configMaps }, secrets, podKey(namespace, name), this.o.secretBox);
    };
    if (r.dryRun) {
      const cur = await this.o.store.get<PodRecordWithData>(podKey(namespace, name));
      build(cur?.value);
      return result!;
    }
    const res = await update<PodRecordWithData>(this.o.store, podKey(namespace, name), build);
    const out = result!;
    if (res) out.metadata!.resourceVersion = String(res.revision);
    this.o.log.info({ pod: `${namespace}/${name}`, generation: out.metadata?.generation }, 'pod applied');
    return out;
  }

  async getPod(ref: PodRef | undefined): Promise<PodObject> {
    if (!ref?.name) throw new ApiError(Status.INVALID_ARGUMENT, 'pod.name: is required');
    const kv = await this.o.store.get<PodRecordWithData>(podKey(ns(ref), ref.name));
    if (!kv) throw new ApiError(Status.NOT_FOUND, `pod ${ns(ref)}/${ref.name} not found`);
    return this.present(kv.value, kv.modRevision);
  }

  private present(rec: PodRecordWithData, rev: number): PodObject {
    const p = podOf(rec);
    p.metadata!.resourceVersion = String(rev);
    if (rec.deleting && !p.metadata!.deletionTimestamp) p.metadata!.deletionTimestamp = new Date(rec.deleting.requestedAt);
    return p;
  }

  async listPods(r: ListPodsRequest): Promise<ListPodsResponse> {
    const { items } = await this.o.store.list<PodRecordWithData>(r.namespace ? `${PODS}${r.namespace}/` : PODS);
    const pods = items.map((kv) => this.present(kv.value, kv.modRevision)).filter((p) => matchLabels(r.labelSelector, p.metadata?.labels ?? {}));
    return ListPodsResponse.fromPartial({ pods });
  }

  private async watchPods(call: ServerWritableStream<WatchPodsRequest, PodEvent>): Promise<void> {
    const ac = new AbortController();
    call.on('cancelled', () => ac.abort());
    const prefix = call.request.namespace ? `${PODS}${call.request.namespace}/` : PODS;
    const sel = call.request.labelSelector;
    const known = new Map<string, PodObject>();
    try {
      const { items, revision } = await this.o.store.list<PodRecordWithData>(prefix);
      for (const kv of items) {
        const p = this.present(kv.value, kv.modRevision);
        if (!matchLabels(sel, p.metadata?.labels ?? {})) continue;
        known.set(kv.key, p);
        call.write(PodEvent.fromPartial({ type: EventType.EVENT_TYPE_ADDED, pod: p }));
      }
      for await (const ev of this.o.store.watch<PodRecordWithData>(prefix, { afterRevision: revision, signal: ac.signal })) {
        if (ev.type === 'put') {
          const p = this.present(ev.kv.value, ev.kv.modRevision);
          const match = matchLabels(sel, p.metadata?.labels ?? {});
          const had = known.has(ev.kv.key);
          if (match) {
            known.set(ev.kv.key, p);
            call.write(PodEvent.fromPartial({ type: had ? EventType.EVENT_TYPE_MODIFIED : EventType.EVENT_TYPE_ADDED, pod: p }));
          } else if (had) {
            known.delete(ev.kv.key);
            call.write(PodEvent.fromPartial({ type: EventType.EVENT_TYPE_DELETED, pod: p }));
          }
        } else {
          const p = known.get(ev.key);
          if (!p) continue;
          known.delete(ev.key);
          call.write(PodEvent.fromPartial({ type: EventType.EVENT_TYPE_DELETED, pod: p }));
        }
      }
      call.end();
    } catch (err) {
      if (!ac.signal.aborted) endWithError(call, new ApiError(Status.UNAVAILABLE, `watch: ${errMsg(err)}`) as unknown as Error);
    }
  }

  async deletePod(r: DeletePodRequest): Promise<PodObject> {
    const ref = r.pod;
    if (!ref?.name) throw new ApiError(Status.INVALID_ARGUMENT, 'pod.name: is required');
    if (r.gracePeriodSeconds !== undefined && r.gracePeriodSeconds < 0) throw new ApiError(Status.INVALID_ARGUMENT, 'grace_period_seconds: must be >= 0');
    const key = podKey(ns(ref), ref.name);
    let out: PodObject | undefined;
    const res = await update<PodRecordWithData>(this.o.store, key, (cur) => {
      if (!cur) return undefined;
      const p = podOf(cur);
      out = p;
      if (cur.deleting) return undefined;
      p.metadata!.deletionTimestamp = new Date();
      const d: { requestedAt: string; graceSeconds?: number } = { requestedAt: new Date().toISOString() };
      if (r.gracePeriodSeconds !== undefined) d.graceSeconds = r.gracePeriodSeconds;
      return { ...cur, object: PodObject.toJSON(p), deleting: d };
    });
    if (!res || !out) throw new ApiError(Status.NOT_FOUND, `pod ${ns(ref)}/${ref.name} not found`);
    if (r.wait) {
      const grace = r.gracePeriodSeconds ?? out.spec?.terminationGracePeriodSeconds ?? 30;
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), (grace + 120) * 1000);
      try {
        if (await this.o.store.get(key)) {
          for await (const ev of this.o.store.watch(key, { afterRevision: res.revision, signal: ac.signal })) {
            if (ev.type === 'delete' && ev.key === key) break;
          }
        }
      } catch (err) {
        if (ac.signal.aborted) throw new ApiError(Status.DEADLINE_EXCEEDED, `pod ${ns(ref)}/${ref.name} still present after ${grace + 120}s`);
        throw err;
      } finally {
        clearTimeout(timer);
        ac.abort();
      }
    }
    return out;
  }

  // ------------------------------------------------------------ cells

  async listCells(): Promise<Cell[]> {
    const { items } = await this.o.store.list<CellRecord>(CELLS);
    return items.map((kv) => cellOf(kv.value));
  }

  private async watchCells(call: ServerWritableStream<ListCellsRequest, CellEvent>): Promise<void> {
    const ac = new AbortController();
    call.on('cancelled', () => ac.abort());
    const known = new Map<string, Cell>();
    try {
      const { items, revision } = await this.o.store.list<CellRecord>(CELLS);
      for (const kv of items) {
        const c = cellOf(kv.value);
        known.set(kv.key, c);
        call.write(CellEvent.fromPartial({ type: EventType.EVENT_TYPE_ADDED, cell: c }));
      }
      for await (const ev of this.o.store.watch<CellRecord>(CELLS, { afterRevision: revision, signal: ac.signal })) {
        if (ev.type === 'put') {
          const c = cellOf(ev.kv.value);
          const had = known.has(ev.kv.key);
          known.set(ev.kv.key, c);
          call.write(CellEvent.fromPartial({ type: had ? EventType.EVENT_TYPE_MODIFIED : EventType.EVENT_TYPE_ADDED, cell: c }));
        } else {
          const c = known.get(ev.key);
          known.delete(ev.key);
          if (c) call.write(CellEvent.fromPartial({ type: EventType.EVENT_TYPE_DELETED, cell: c }));
        }
      }
      call.end();
    } catch (err) {
      if (!ac.signal.aborted) endWithError(call, new Error(errMsg(err)));
    }
  }

  // ------------------------------------------------------------ streams

  /** The agent client of the cell running this pod, or an error saying why there is none. */
  private async agentFor(ref: PodRef | undefined) {
    if (!ref?.name) throw new ApiError(Status.INVALID_ARGUMENT, 'pod.name: is required');
    const kv = await this.o.store.get<PodRecordWithData>(podKey(ns(ref), ref.name));
    if (!kv) throw new ApiError(Status.NOT_FOUND, `pod ${ns(ref)}/${ref.name} not found`);
    const p = podOf(kv.value);
    if (!p.cellId) throw new ApiError(Status.FAILED_PRECONDITION, `pod ${ns(ref)}/${ref.name} has no cell yet`);
    const c = await this.o.store.get<CellRecord>(cellKey(p.cellId));
    const cell = c ? cellOf(c.value) : undefined;
    if (!cell || !cell.address || (cell.state !== CellState.CELL_STATE_BOUND && cell.state !== CellState.CELL_STATE_DRAINING)) {
      throw new ApiError(Status.FAILED_PRECONDITION, `pod ${ns(ref)}/${ref.name}: its cell ${p.cellId} is not running the pod yet`);
    }
    return { client: this.o.agents.get(cell.id, cell.address), pod: p };
  }

  /** kubectl's rule: no container named means the pod's only container (or an error naming them). */
  private defaultContainer(pod: PodObject, given: string, init = false): string {
    if (given) return given;
    const names = (pod.spec?.containers ?? []).map((c) => c.name);
    if (names.length === 1) return names[0]!;
    const all = [...names, ...(init ? (pod.spec?.initContainers ?? []).map((c) => c.name) : [])];
    throw new ApiError(Status.INVALID_ARGUMENT, `container: a container name must be specified for pod ${pod.metadata?.name}, choose one of: [${all.join(' ')}]`);
  }

  private async logs(call: ServerWritableStream<LogsRequest, LogChunk>): Promise<void> {
    try {
      const { client, pod } = await this.agentFor(call.request.pod);
      const options = AgentLogsRequest.fromPartial(call.request.options ?? {});
      options.container = this.defaultContainer(pod, options.container, true);
      const up = client.logs(options);
      call.on('cancelled', () => up.cancel());
      up.on('data', (chunk: LogChunk) => call.write(chunk));
      up.on('end', () => call.end());
      up.on('error', (err: ServiceError) => {
        if (err.code === Status.CANCELLED) return;
        endWithError(call, err as Error);
      });
    } catch (err) {
      endWithError(call, toStreamError(err));
    }
  }

  private relayExec(call: ServerDuplexStream<ExecRequest, ExecOutput>, kind: 'exec' | 'attach'): void {
    let up: ClientDuplexStream<ExecInput, ExecOutput> | undefined;
    const pending: ExecInput[] = [];
    let ended = false;
    let podObj: PodObject | undefined;
    call.on('data', (req: ExecRequest) => {
      const f = req.frame;
      if (!f) return;
      if (f.$case === 'target') {
        if (up) return;
        this.agentFor(f.value).then(
          ({ client, pod }) => {
            podObj = pod;
            up = kind === 'exec' ? client.exec() : client.attach();
            up.on('data', (out: ExecOutput) => call.write(out));
            up.on('end', () => call.end());
            up.on('error', (err: ServiceError) => endWithError(call, err as Error));
            for (const p of pending.splice(0)) {
              if (p.frame?.$case === 'start') {
                try {
                  p.frame.value.container = this.defaultContainer(pod, p.frame.value.container);
                } catch (err) {
                  up.cancel();
                  endWithError(call, toStreamError(err));
                  return;
                }
              }
              up.write(p);
            }
            if (ended) up.end();
          },
          (err) => endWithError(call, toStreamError(err)),
        );
      } else if (up) {
        if (f.value.frame?.$case === 'start' && podObj) {
          try {
            f.value.frame.value.container = this.defaultContainer(podObj, f.value.frame.value.container);
          } catch (err) {
            up.cancel();
            endWithError(call, toStreamError(err));
            return;
          }
        }
        up.write(f.value);
      }
      else pending.push(f.value);
    });
    call.on('end', () => {
      ended = true;
      up?.end();
    });
    call.on('cancelled', () => up?.cancel());
  }

  private relayPortForward(call: ServerDuplexStream<PortForwardRequest, PortForwardFrame>): void {
    let up: ClientDuplexStream<PortForwardFrame, PortForwardFrame> | undefined;
    const pending: PortForwardFrame[] = [];
    let ended = false;
    call.on('data', (req: PortForwardRequest) => {
      const f = req.frame;
      if (!f) return;
      if (f.$case === 'target') {
        if (up) return;
        this.agentFor(f.value).then(
          ({ client }) => {
            up = client.portForward();
            up.on('data', (out: PortForwardFrame) => call.write(out));
            up.on('end', () => call.end());
            up.on('error', (err: ServiceError) => endWithError(call, err as Error));
            for (const p of pending.splice(0)) up.write(p);
            if (ended) up.end();
          },
          (err) => endWithError(call, toStreamError(err)),
        );
      } else if (up) up.write(f.value);
      else pending.push(f.value);
    });
    call.on('end', () => {
      ended = true;
      up?.end();
    });
    call.on('cancelled', () => up?.cancel());
  }
}

/**
 * Ends a server stream with an error status. (grpc-js sends the status from the stream's
 * 'error' handler; `destroy(err)` would tear the stream down without ever sending one, and the
 * client — `cellctl logs --previous` of a container with no previous instance — hung.)
 */
function endWithError(call: { emit(event: 'error', err: Error): boolean }, err: Error): void {
  call.emit('error', err);
}

function toStreamError(err: unknown): Error {
  if (err instanceof ApiError) {
    return Object.assign(new Error(err.message), { code: err.code, details: err.message });
  }
  return err as Error;
}
