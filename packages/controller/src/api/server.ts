// The controller's gRPC API (cello.controller.v1.Controller), what cellctl talks to. Writes go
// to the store only (the leader's reconciler acts on them); reads come from the store, so any
// controller replica can serve them; streams (logs, exec, attach, port-forward) are relayed to
// the pod's cell agent frame by frame. Every call is authenticated and authorized first
// (auth/index.ts); streams carry the caller's name to the agent's audit log.
import { enterStage, progressMessage } from '../cells/progress.js';
import { savedChunks, savedLogsKey, type SavedPodLogs } from '../logs/saved.js';
import { randomUUID } from 'node:crypto';
import {
  Server,
  status as Status,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ClientDuplexStream,
  type sendUnaryData,
  type ServiceError,
} from '@grpc/grpc-js';
import { ManifestError, HealthService } from '@cello/proto';
import {
  LogsRequest as AgentLogsRequest,
  AgentLogsRequest as OwnLogsRequest,
  type AgentLogChunk,
  ConfigMapData,
  SecretData,
  PodSpec,
  PodStatus,
  PodPhase,
  ConditionStatus,
  type ExecInput,
  type ExecOutput,
  type LogChunk,
  type PortForwardFrame,
} from '@cello/proto/cell';
import {
  ControllerService,
  type Cell,
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
  ClusterEvent,
  ListAuditResponse,
  SupportBundleChunk,
  TopCellsResponse,
  TopPodsResponse,
  type ListAuditRequest,
  type CellLogsRequest,
  type SupportBundleRequest,
  type TopCellsRequest,
  type TopPodsRequest,
} from '@cello/proto/controller';
import { topCells, topPods } from './top.js';
import { buildSupportBundle, type SupportSources } from '../support/bundle.js';
import { HealthService as HealthCheckService } from '@cello/proto/health';
import type { Store } from '../store/store.js';
import { CELLS, PODS, Events, eventsPrefix, cellKey, cellOf, podKey, podOf, update, type CellRecord } from '../cells/schema.js';
import { CellState } from '../cells/state.js';
import { SelectionError, selectCandidates } from '../selection/selection.js';
import type { InstanceType } from '../providers/provider.js';
import type { AgentAccess } from '../agents/pool.js';
import { errMsg } from '../util/errors.js';
import { setCondition } from '../cells/conditions.js';
import { readPodSecrets, writePodSecrets, type PodRecordWithData } from '../cells/pod-secrets.js';
import type { SecretBox } from '../security/secret-box.js';
import type { Logger } from '../obs/logger.js';
import { VERSION } from '../version.js';
import { VIRTUAL_NODE_USER } from './auth/names.js';
import { CelloError, toStatus } from '../errors.js';
import { ManifestParser } from './manifest-parser.js';
import { SessionAudit, type OpenSession } from './session-audit.js';
import { apiError, type ApiAuth, type Attributes, type Principal, type Resource, type Verb } from './auth/index.js';

/** What a stream may queue before its target frame has been resolved to an agent. */
export const MAX_PENDING_FRAMES = 64;
export const MAX_PENDING_BYTES = 1 << 20;

export interface ApiOptions {
  store: Store;
  agents: AgentAccess;
  log: Logger;
  controllerId: string;
  providerName: string;
  instanceTypes: InstanceType[];
  /** Seals the secrets applied with pods before they reach the store. */
  secretBox?: SecretBox;
  /** Who may call (required to listen: there is no unauthenticated API). */
  auth?: ApiAuth;
  /** The provider's rules on pods (CellProvider.refusePod): a refused pod is not stored. */
  refusePod?: (pod: { namespace: string; annotations: Record<string, string> }) => string | undefined;
  /** What `cellctl dump` adds beyond the store: the configuration (redacted there) and this process's recent logs. */
  support?: SupportSources;
}

function fail(cb: sendUnaryData<never>, err: unknown): void {
  cb(toStatus(err), null);
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
  private readonly audit: SessionAudit;
  private readonly manifests = new ManifestParser();
  private server?: Server;

  constructor(private readonly o: ApiOptions) {
    this.events = new Events(o.store);
    this.audit = new SessionAudit(o.store, o.log);
  }

  async listen(address: string): Promise<number> {
    const server = new Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
    if (!this.o.auth) throw new Error('the controller API needs authentication (ApiOptions.auth) to listen');
    const creds = this.o.auth.credentials(address);
    server.addService(ControllerService, this.handlers());
    server.addService(HealthCheckService, new HealthService().implementation);
    this.server = server;
    return new Promise((resolve, reject) => server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return this.manifests.close();
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
    await this.manifests.close();
  }

  /** The caller, authenticated (UNAUTHENTICATED otherwise). */
  private async authenticate(call: Parameters<ApiAuth['authenticate']>[0]): Promise<Principal> {
    if (!this.o.auth) throw apiError('Unauthenticated', 'this API has no authentication configured');
    return this.o.auth.authenticate(call);
  }

  /** The caller, authenticated and allowed to do `a` (PERMISSION_DENIED naming user, verb and namespace otherwise). */
  private async admit(call: Parameters<ApiAuth['authenticate']>[0], a: Attributes): Promise<Principal> {
    const p = await this.authenticate(call);
    await this.o.auth!.authorize(p, a);
    return p;
  }

  /**
   * For a request over every namespace (namespace '' = all): undefined when the caller may see
   * them all, else a per-namespace check that filters what it returns.
   */
  private async namespaceFilter(p: Principal, verb: Verb, resource: Resource, namespace: string): Promise<((ns: string) => Promise<boolean>) | undefined> {
    const auth = this.o.auth!;
    if (namespace) {
      await auth.authorize(p, { verb, resource, namespace });
      return undefined;
    }
    if (await auth.allowed(p, { verb, resource, namespace: '*' })) return undefined;
    const seen = new Map<string, Promise<boolean>>();
    return (n: string) => {
      let v = seen.get(n);
      if (!v) seen.set(n, (v = auth.allowed(p, { verb, resource, namespace: n })));
      return v;
    };
  }

  /** A unary handler that admits the caller for `attrs(request)` first. */
  private guarded<Req, Res>(attrs: (r: Req) => Attributes | undefined, fn: (r: Req, p: Principal) => Promise<Res>) {
    return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      const a = attrs(call.request);
      (a ? this.admit(call, a) : this.authenticate(call))
        .then((p) => fn(call.request, p))
        .then(
          (res) => cb(null, res),
          (err) => fail(cb as sendUnaryData<never>, err),
        );
    };
  }

  handlers() {
    return {
      // The namespace of an apply is known once the manifest is parsed: applyPod authorizes it.
      applyPod: this.guarded(
        () => undefined,
        (r: ApplyPodRequest, p) => this.applyPod(r, (namespace, name) => this.o.auth!.authorize(p, { verb: 'create', resource: 'pods', namespace, name })),
      ),
      getPod: this.guarded(
        (r: GetPodRequest) => ({ verb: 'get', resource: 'pods', namespace: ns(r.pod), name: r.pod?.name ?? '' }),
        (r: GetPodRequest) => this.getPod(r.pod),
      ),
      listPods: this.guarded(
        () => undefined,
        async (r: ListPodsRequest, p) => {
          const only = await this.namespaceFilter(p, 'list', 'pods', r.namespace);
          const res = await this.listPods(r);
          if (only) res.pods = (await Promise.all(res.pods.map(async (x) => ((await only(x.metadata?.namespace ?? '')) ? x : undefined)))).filter((x) => x !== undefined);
          return res;
        },
      ),
      watchPods: (call: ServerWritableStream<WatchPodsRequest, PodEvent>) =>
        void this.authenticate(call)
          .then(async (p) => this.watchPods(call, await this.namespaceFilter(p, 'watch', 'pods', call.request.namespace)))
          .catch((err) => endWithError(call, toStreamError(err))),
      deletePod: this.guarded(
        (r: DeletePodRequest) => ({ verb: 'delete', resource: 'pods', namespace: ns(r.pod), name: r.pod?.name ?? '' }),
        (r: DeletePodRequest) => this.deletePod(r),
      ),
      listCells: this.guarded(
        () => ({ verb: 'list', resource: 'cells', namespace: '*' }),
        async (_r: ListCellsRequest) => ListCellsResponse.fromPartial({ cells: await this.listCells() }),
      ),
      watchCells: (call: ServerWritableStream<ListCellsRequest, CellEvent>) =>
        void this.admit(call, { verb: 'watch', resource: 'cells', namespace: '*' }).then(
          () => this.watchCells(call),
          (err) => endWithError(call, toStreamError(err)),
        ),
      logs: (call: ServerWritableStream<LogsRequest, LogChunk>) =>
        void this.admit(call, { verb: 'logs', resource: 'pods', namespace: ns(call.request.pod), name: call.request.pod?.name ?? '' }).then(
          () => this.logs(call),
          (err) => endWithError(call, toStreamError(err)),
        ),
      exec: (call: ServerDuplexStream<ExecRequest, ExecOutput>) => this.relayExec(call, 'exec'),
      attach: (call: ServerDuplexStream<ExecRequest, ExecOutput>) => this.relayExec(call, 'attach'),
      portForward: (call: ServerDuplexStream<PortForwardRequest, PortForwardFrame>) => this.relayPortForward(call),
      listEvents: this.guarded(
        (r: ListEventsRequest) => eventsAttributes('list', r),
        async (r: ListEventsRequest) => ListEventsResponse.fromPartial({ events: await this.events.listUnder(eventsPrefix(eventsOf(r)), r.limit) }),
      ),
      watchEvents: (call: ServerWritableStream<ListEventsRequest, ClusterEvent>) =>
        void this.admit(call, eventsAttributes('watch', call.request)).then(
          () => this.watchEvents(call),
          (err) => endWithError(call, toStreamError(err)),
        ),
      topPods: this.guarded(
        () => undefined,
        async (r: TopPodsRequest, p) => {
          const only = await this.namespaceFilter(p, 'list', 'metrics', r.namespace);
          let pods = (await this.listPods({ namespace: r.namespace, labelSelector: '' })).pods;
          if (only) pods = (await Promise.all(pods.map(async (x) => ((await only(x.metadata?.namespace ?? '')) ? x : undefined)))).filter((x) => x !== undefined);
          return TopPodsResponse.fromPartial(await topPods(this.o.agents, pods, await this.listCells()));
        },
      ),
      topCells: this.guarded(
        () => ({ verb: 'list', resource: 'metrics', namespace: '*' }),
        async (_r: TopCellsRequest) => TopCellsResponse.fromPartial(await topCells(this.o.agents, await this.listCells())),
      ),
      listAudit: this.guarded(
        (r: ListAuditRequest) => (r.pod?.namespace ? { verb: 'list', resource: 'audit', namespace: r.pod.namespace, name: r.pod.name } : undefined),
        async (r: ListAuditRequest, p) => {
          let sessions = await this.audit.list(r.pod, r.limit);
          if (!r.pod?.namespace) {
            const only = await this.namespaceFilter(p, 'list', 'audit', '');
            if (only) sessions = (await Promise.all(sessions.map(async (x) => ((await only(x.pod?.namespace ?? '')) ? x : undefined)))).filter((x) => x !== undefined);
          }
          return ListAuditResponse.fromPartial({ sessions });
        },
      ),
      cellLogs: (call: ServerWritableStream<CellLogsRequest, AgentLogChunk>) =>
        void this.admit(call, { verb: 'logs', resource: 'cells', namespace: '*', name: call.request.cellId })
          .then(() => this.cellLogs(call))
          .catch((err) => endWithError(call, toStreamError(err))),
      supportBundle: (call: ServerWritableStream<SupportBundleRequest, SupportBundleChunk>) =>
        void this.admit(call, { verb: 'get', resource: 'support', namespace: '*' })
          .then(async () => {
            const archive = await buildSupportBundle({
              store: this.o.store,
              agents: this.o.agents,
              controllerId: this.o.controllerId,
              providerName: this.o.providerName,
              ...(this.o.support ?? {}),
              eventLimit: call.request.eventLimit,
            });
            for (let i = 0; i < archive.length; i += BUNDLE_CHUNK) call.write(SupportBundleChunk.fromPartial({ data: archive.subarray(i, i + BUNDLE_CHUNK) }));
            call.end();
          })
          .catch((err) => endWithError(call, toStreamError(err))),
      // Any authenticated caller may ask for the version (as Kubernetes' /version).
      version: this.guarded(
        () => undefined,
        async (_r: VersionRequest) =>
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

  /** `authorize`: called with the pod's namespace once the manifest says it, before anything is written. */
  async applyPod(r: ApplyPodRequest, authorize?: (namespace: string, name: string) => Promise<void>): Promise<PodObject> {
    let parsed;
    try {
      parsed = await this.manifests.parse(r.manifest, { namespace: r.namespace || 'default' });
    } catch (err) {
      if (err instanceof ManifestError) throw new CelloError('InvalidArgument', err.message);
      throw new CelloError('InvalidArgument', `manifest: ${errMsg(err)}`);
    }
    const pod = parsed.pod;
    const name = pod.metadata?.name ?? '';
    const namespace = pod.metadata?.namespace || r.namespace || 'default';
    if (!name) throw new CelloError('InvalidArgument', 'metadata.name: is required');
    await authorize?.(namespace, name);
    try {
      selectCandidates(this.o.instanceTypes, { spec: pod.spec!, annotations: pod.metadata?.annotations ?? {}, overhead: { cpuMillis: 0, memoryBytes: 0 }, defaultSpot: 'never' });
    } catch (err) {
      // Annotations that cannot mean anything are refused; a pod too big for any type is
      // accepted and reported Unschedulable, as Kubernetes does.
      if (err instanceof SelectionError && err.reason !== 'NoFittingInstanceType') throw err;
    }
    // Refused here, as an admission webhook would, rather than stored and left Unschedulable;
    // INVALID_ARGUMENT, so the virtual node fails the Kubernetes pod with this message too.
    const refused = this.o.refusePod?.({ namespace, annotations: pod.metadata?.annotations ?? {} });
    if (refused) throw new CelloError('InvalidArgument', refused);
    const secrets = Object.fromEntries(Object.entries(parsed.secrets).map(([k, v]) => [k, SecretData.toJSON(v)]));
    const configMaps = Object.fromEntries(Object.entries(parsed.configMaps).map(([k, v]) => [k, ConfigMapData.toJSON(v)]));
    let result: PodObject | undefined;
    const build = (cur: PodRecordWithData | undefined): PodRecordWithData | undefined => {
      if (cur?.deleting) throw new CelloError('FailedPrecondition', `pod ${namespace}/${name} is being deleted; wait until it is gone`);
      if (cur) {
        const obj = podOf(cur);
        // Through toJSON: one field order, whichever way each side was built (convertPod puts a
        // resource list's `extended` first, fromJSON last; re-applying a pod with resources bumped its generation).
        const sameSpec = JSON.stringify(obj.spec && PodSpec.toJSON(obj.spec)) === JSON.stringify(pod.spec && PodSpec.toJSON(pod.spec));
        const sameMeta =
          JSON.stringify(obj.metadata?.labels) === JSON.stringify(pod.metadata?.labels ?? {}) &&
          JSON.stringify(obj.metadata?.annotations) === JSON.stringify(pod.metadata?.annotations ?? {});
        const storeKey = podKey(namespace, name);
        const sameData =
          JSON.stringify(readPodSecrets(cur, storeKey, this.o.secretBox)) === JSON.stringify(secrets) && JSON.stringify(cur.configMaps ?? {}) === JSON.stringify(configMaps);
        // A record from before secrets were sealed is rewritten (sealed) even when nothing changed.
        const legacyPlain = this.o.secretBox !== undefined && cur.secrets !== undefined;
        if (sameSpec && sameMeta && sameData && !legacyPlain) {
          result = obj;
          return undefined;
        }
        obj.spec = pod.spec;
        obj.metadata!.labels = pod.metadata?.labels ?? {};
        obj.metadata!.annotations = pod.metadata?.annotations ?? {};
        // Labels and annotations too: the cell's env (fieldRef) and downward API read them, as
        // the kubelet's next container start and volume sync do.
        obj.metadata!.generation += 1;
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
      const created: PodRecordWithData = { object: PodObject.toJSON(obj), configMaps };
      enterStage(created, 'Selecting', { message: 'accepted; choosing an instance type and a cell' });
      return writePodSecrets(created, secrets, podKey(namespace, name), this.o.secretBox);
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
    if (!ref?.name) throw new CelloError('InvalidArgument', 'pod.name: is required');
    const kv = await this.o.store.get<PodRecordWithData>(podKey(ns(ref), ref.name));
    if (!kv) throw new CelloError('NotFound', `pod ${ns(ref)}/${ref.name} not found`);
    return this.present(kv.value, kv.modRevision);
  }

  private present(rec: PodRecordWithData, rev: number): PodObject {
    const p = podOf(rec);
    p.progress = progressMessage(rec.progress);
    p.metadata!.resourceVersion = String(rev);
    if (rec.deleting && !p.metadata!.deletionTimestamp) p.metadata!.deletionTimestamp = new Date(rec.deleting.requestedAt);
    return p;
  }

  async listPods(r: ListPodsRequest): Promise<ListPodsResponse> {
    const { items } = await this.o.store.list<PodRecordWithData>(r.namespace ? `${PODS}${r.namespace}/` : PODS);
    const pods = items.map((kv) => this.present(kv.value, kv.modRevision)).filter((p) => matchLabels(r.labelSelector, p.metadata?.labels ?? {}));
    return ListPodsResponse.fromPartial({ pods });
  }

  /** `only`: for a watch over every namespace by a caller who may not see them all. */
  private async watchPods(call: ServerWritableStream<WatchPodsRequest, PodEvent>, only?: (ns: string) => Promise<boolean>): Promise<void> {
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
        if (only && !(await only(p.metadata?.namespace ?? ''))) continue;
        known.set(kv.key, p);
        call.write(PodEvent.fromPartial({ type: EventType.EVENT_TYPE_ADDED, pod: p }));
      }
      for await (const ev of this.o.store.watch<PodRecordWithData>(prefix, { afterRevision: revision, signal: ac.signal })) {
        if (ev.type === 'put') {
          const p = this.present(ev.kv.value, ev.kv.modRevision);
          const match = matchLabels(sel, p.metadata?.labels ?? {}) && (!only || (await only(p.metadata?.namespace ?? '')));
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
      if (!ac.signal.aborted) endWithError(call, toStatus(new CelloError('Unavailable', `watch: ${errMsg(err)}`)));
    }
  }

  async deletePod(r: DeletePodRequest): Promise<PodObject> {
    const ref = r.pod;
    if (!ref?.name) throw new CelloError('InvalidArgument', 'pod.name: is required');
    if (r.gracePeriodSeconds !== undefined && r.gracePeriodSeconds < 0) throw new CelloError('InvalidArgument', 'grace_period_seconds: must be >= 0');
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
    if (!res || !out) throw new CelloError('NotFound', `pod ${ns(ref)}/${ref.name} not found`);
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
        if (ac.signal.aborted) throw new CelloError('DeadlineExceeded', `pod ${ns(ref)}/${ref.name} still present after ${grace + 120}s`);
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

  /** A cell agent's own log, relayed chunk by chunk (the agent bounds what a slow reader may queue). */
  private async cellLogs(call: ServerWritableStream<CellLogsRequest, AgentLogChunk>): Promise<void> {
    const id = call.request.cellId;
    if (!id) throw new CelloError('InvalidArgument', 'cellId: is required');
    const kv = await this.o.store.get<CellRecord>(cellKey(id));
    if (!kv) throw new CelloError('NotFound', `cell ${id} not found`);
    const cell = cellOf(kv.value);
    if (!cell.address || cell.state === CellState.CELL_STATE_TERMINATED) {
      throw new CelloError('FailedPrecondition', `cell ${id} has no running agent (${CellState[cell.state] ?? cell.state})`);
    }
    const up = this.o.agents.get(cell.id, cell.address).agentLogs(OwnLogsRequest.fromPartial(call.request.options ?? {}));
    call.on('cancelled', () => up.cancel());
    up.on('data', (c: AgentLogChunk) => {
      if (!call.write(c)) up.pause();
    });
    call.on('drain', () => up.resume());
    up.on('end', () => call.end());
    up.on('error', (err: ServiceError) => endWithError(call, err as Error));
  }

  /** The stored events (newest `limit`), then each one recorded after them. */
  private async watchEvents(call: ServerWritableStream<ListEventsRequest, ClusterEvent>): Promise<void> {
    const ac = new AbortController();
    call.on('cancelled', () => ac.abort());
    const prefix = eventsPrefix(eventsOf(call.request));
    try {
      const { items, revision } = await this.o.store.list<unknown>(prefix);
      const stored = items.map((kv) => ClusterEvent.fromJSON(kv.value)).sort((a, b) => (a.time?.getTime() ?? 0) - (b.time?.getTime() ?? 0));
      for (const e of call.request.limit > 0 ? stored.slice(-call.request.limit) : stored) call.write(e);
      for await (const ev of this.o.store.watch<unknown>(prefix, { afterRevision: revision, signal: ac.signal })) {
        if (ev.type === 'put') call.write(ClusterEvent.fromJSON(ev.kv.value));
      }
      call.end();
    } catch (err) {
      if (!ac.signal.aborted) endWithError(call, new Error(errMsg(err)));
    }
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
    if (!ref?.name) throw new CelloError('InvalidArgument', 'pod.name: is required');
    const kv = await this.o.store.get<PodRecordWithData>(podKey(ns(ref), ref.name));
    if (!kv) throw new CelloError('NotFound', `pod ${ns(ref)}/${ref.name} not found`);
    const p = podOf(kv.value);
    if (!p.cellId) throw new CelloError('FailedPrecondition', `pod ${ns(ref)}/${ref.name} has no cell yet`);
    const c = await this.o.store.get<CellRecord>(cellKey(p.cellId));
    const cell = c ? cellOf(c.value) : undefined;
    if (!cell || !cell.address || (cell.state !== CellState.CELL_STATE_BOUND && cell.state !== CellState.CELL_STATE_DRAINING)) {
      throw new CelloError('FailedPrecondition', `pod ${ns(ref)}/${ref.name}: its cell ${p.cellId} is not running the pod yet`);
    }
    return { client: this.o.agents.get(cell.id, cell.address), pod: p };
  }

  /** kubectl's rule: no container named means the pod's only container (or an error naming them). */
  private defaultContainer(pod: PodObject, given: string, init = false): string {
    if (given) return given;
    const names = (pod.spec?.containers ?? []).map((c) => c.name);
    if (names.length === 1) return names[0]!;
    const all = [...names, ...(init ? (pod.spec?.initContainers ?? []).map((c) => c.name) : [])];
    throw new CelloError('InvalidArgument', `container: a container name must be specified for pod ${pod.metadata?.name}, choose one of: [${all.join(' ')}]`);
  }

  /**
   * A pod whose cell is not running it: the logs the controller kept when it ended, if any, with
   * the options applied; else an error that says why there are none. False: the pod has not
   * ended, so the caller's "no cell yet" stands.
   */
  private async savedLogs(call: ServerWritableStream<LogsRequest, LogChunk>): Promise<boolean> {
    const ref = call.request.pod!;
    const what = `pod ${ns(ref)}/${ref.name}`;
    const kv = await this.o.store.get<PodRecordWithData>(podKey(ns(ref), ref.name));
    if (!kv) return false;
    const pod = podOf(kv.value);
    const saved = (await this.o.store.get<SavedPodLogs>(savedLogsKey(ns(ref), ref.name)))?.value;
    const ended = pod.status?.phase === PodPhase.POD_PHASE_SUCCEEDED || pod.status?.phase === PodPhase.POD_PHASE_FAILED;
    if (!saved || saved.uid !== pod.metadata?.uid) {
      if (!ended) return false;
      throw new CelloError(
        'FailedPrecondition',
        `${what} ended and its cell ${pod.cellId || ''} is gone; its logs were not kept (pods.keepLogBytes is 0, or its agent could not be read when it ended)`.replace(
          'cell  is',
          'cell is',
        ),
      );
    }
    const options = AgentLogsRequest.fromPartial(call.request.options ?? {});
    const container = this.defaultContainer(pod, options.container, true);
    if (saved.prunedAt) {
      throw new CelloError(
        'FailedPrecondition',
        `${what}: its cell is gone, and the logs kept when it ended (${saved.savedAt}) were pruned at ${saved.prunedAt} (pods.keepLogsSeconds)`,
      );
    }
    if (options.previous) throw new CelloError('FailedPrecondition', `${what}: its cell is gone; only the last instance's logs were kept, not the previous one's`);
    const err = saved.errors?.[container];
    if (err) throw new CelloError('FailedPrecondition', `${what}: its cell is gone, and its container "${container}"'s logs could not be read when it ended: ${err}`);
    if (!saved.containers?.[container]) throw new CelloError('NotFound', `${what}: no container "${container}"`);
    for (const chunk of savedChunks(saved, container, options)) call.write(chunk);
    call.end();
    return true;
  }

  private async logs(call: ServerWritableStream<LogsRequest, LogChunk>): Promise<void> {
    try {
      let target;
      try {
        target = await this.agentFor(call.request.pod);
      } catch (err) {
        // No cell running the pod (any more): what was kept when it ended.
        if (err instanceof CelloError && err.code === 'FailedPrecondition' && (await this.savedLogs(call))) return;
        throw err;
      }
      const { client, pod } = target;
      const options = AgentLogsRequest.fromPartial(call.request.options ?? {});
      options.container = this.defaultContainer(pod, options.container, true);
      const up = client.logs(options);
      call.on('cancelled', () => up.cancel());
      up.on('data', (chunk: LogChunk) => {
        // A slow reader holds the agent's stream (HTTP/2 flow control then holds the agent)
        // instead of queueing a followed log here without bound.
        if (!call.write(chunk)) up.pause();
      });
      call.on('drain', () => up.resume());
      up.on('end', () => call.end());
      up.on('error', (err: ServiceError) => {
        if (err.code === Status.CANCELLED) return;
        endWithError(call, err as Error);
      });
    } catch (err) {
      endWithError(call, toStreamError(err));
    }
  }

  /**
   * Exec, attach and port-forward: the first frame names the pod; once the caller is admitted
   * for it and its agent is dialled, the rest is relayed both ways with backpressure. Frames
   * that arrive before then are queued, but only MAX_PENDING_FRAMES / MAX_PENDING_BYTES of them.
   * Every start frame gets `requestedBy` = the authenticated user, whatever the client put there.
   */
  private relay<In extends { frame?: { $case: string; value: unknown } | undefined }, Up, Down>(
    call: ServerDuplexStream<In, Down>,
    verb: 'exec' | 'attach' | 'portforward',
    open: (client: ReturnType<AgentAccess['get']>) => ClientDuplexStream<Up, Down>,
    /** The frame for the agent, or an error ending the stream (a start frame naming no container of a multi-container pod). */
    forward: (value: Up, pod: PodObject, user: string) => Up,
  ): void {
    let up: ClientDuplexStream<Up, Down> | undefined;
    let pod: PodObject | undefined;
    let user = '';
    let session: OpenSession | undefined;
    const pending: Up[] = [];
    let pendingBytes = 0;
    let targeted = false;
    let ended = false;
    let failed = false;
    const abort = (err: unknown) => {
      if (failed) return;
      failed = true;
      session?.finish(errMsg(err));
      up?.cancel();
      call.removeAllListeners('data');
      endWithError(call, toStreamError(err));
    };
    const send = (v: Up) => {
      let out: Up;
      try {
        out = forward(v, pod!, user);
      } catch (err) {
        abort(err);
        return;
      }
      const f = (out as { frame?: { $case: string; value: { container?: string; command?: string[]; port?: number } } }).frame;
      if (f?.$case === 'start') session?.started(f.value);
      // The agent's side is full: stop reading the client until it drains.
      if (!up!.write(out)) call.pause();
    };
    const principal = this.authenticate(call);
    principal.catch(() => undefined);
    call.on('data', (req: In) => {
      if (failed) return;
      const f = req.frame;
      if (!f) return;
      if (f.$case === 'target') {
        if (targeted) return;
        targeted = true;
        const ref = f.value as PodRef;
        principal
          .then(async (p) => {
            await this.o.auth!.authorize(p, { verb, resource: 'pods', namespace: ns(ref), name: ref?.name ?? '' });
            user = p.user;
            return this.agentFor(ref);
          })
          .then(({ client, pod: found }) => {
            if (failed) return;
            pod = found;
            session = this.audit.open(verb, user, { namespace: ns(ref), name: ref.name }, found.cellId);
            up = open(client);
            up.on('data', (out: Down) => {
              const f = (out as { frame?: { $case: string; value: { exitCode: number; signal: string } } }).frame;
              if (f?.$case === 'exit') session?.exited(f.value);
              if (!call.write(out)) up!.pause();
            });
            call.on('drain', () => up?.resume());
            up.on('drain', () => call.resume());
            up.on('end', () => {
              session?.finish();
              call.end();
            });
            up.on('error', (err: ServiceError) => {
              session?.finish(err.details || err.message);
              if (!failed) endWithError(call, err as Error);
            });
            for (const v of pending.splice(0)) send(v);
            pendingBytes = 0;
            if (ended && !failed) up.end();
          }, abort);
        return;
      }
      const v = f.value as Up;
      if (up) return send(v);
      pending.push(v);
      pendingBytes += frameBytes(v);
      if (pending.length > MAX_PENDING_FRAMES || pendingBytes > MAX_PENDING_BYTES) {
        pending.length = 0;
        abort(
          apiError(
            'ResourceExhausted',
            `${targeted ? 'while the target was being resolved' : 'before the target frame'} the stream queued more than ${MAX_PENDING_FRAMES} frames or ${MAX_PENDING_BYTES} bytes; send the target frame first and wait for output before sending more`,
          ),
        );
      }
    });
    call.on('end', () => {
      ended = true;
      up?.end();
    });
    call.on('cancelled', () => {
      session?.finish('cancelled by the client');
      up?.cancel();
    });
  }

  private relayExec(call: ServerDuplexStream<ExecRequest, ExecOutput>, kind: 'exec' | 'attach'): void {
    this.relay<ExecRequest, ExecInput, ExecOutput>(
      call as unknown as ServerDuplexStream<ExecRequest & { frame?: { $case: string; value: unknown } }, ExecOutput>,
      kind,
      (client) => (kind === 'exec' ? client.exec() : client.attach()),
      (v, pod, user) => {
        if (v.frame?.$case === 'start') {
          v.frame.value.container = this.defaultContainer(pod, v.frame.value.container);
          v.frame.value.requestedBy = requester(user, v.frame.value.requestedBy);
        }
        return v;
      },
    );
  }

  private relayPortForward(call: ServerDuplexStream<PortForwardRequest, PortForwardFrame>): void {
    this.relay<PortForwardRequest, PortForwardFrame, PortForwardFrame>(
      call as unknown as ServerDuplexStream<PortForwardRequest & { frame?: { $case: string; value: unknown } }, PortForwardFrame>,
      'portforward',
      (client) => client.portForward(),
      (v, _pod, user) => {
        if (v.frame?.$case === 'start') v.frame.value.requestedBy = requester(user, v.frame.value.requestedBy);
        return v;
      },
    );
  }
}

/** What an events request reads: a pod's (namespaced), a cell's or all (cluster-wide). */
function eventsOf(r: ListEventsRequest): { pod?: PodRef; cell?: string } {
  if (r.pod?.name && r.cell) throw new CelloError('InvalidArgument', 'pod, cell: name one or the other');
  if (r.pod?.name) return { pod: { namespace: ns(r.pod), name: r.pod.name } };
  return r.cell ? { cell: r.cell } : {};
}

function eventsAttributes(verb: 'list' | 'watch', r: ListEventsRequest): Attributes {
  return r.pod?.name ? { verb, resource: 'events', namespace: ns(r.pod), name: r.pod.name } : { verb, resource: 'events', namespace: '*' };
}

/** Bytes per SupportBundleChunk (well under gRPC's 4 MiB default message limit). */
const BUNDLE_CHUNK = 1 << 20;

/**
 * The name the agent records. A client's own claim is ignored — except the virtual node's, which
 * relays for the Kubernetes user its kubelet API authenticated: "alice via system:virtual-node".
 */
function requester(user: string, claimed: string): string {
  return user === VIRTUAL_NODE_USER && claimed ? `${claimed} via ${user}` : user;
}

/** Roughly what a queued frame holds (its payload bytes; a small fixed cost otherwise). */
function frameBytes(v: unknown): number {
  const f = (v as { frame?: { value?: unknown } }).frame?.value;
  return f instanceof Uint8Array ? f.length + 64 : 64;
}

/**
 * Ends a server stream with an error status. (grpc-js sends the status from the stream's
 * 'error' handler; `destroy(err)` would tear the stream down without ever sending one, and the
 * client — `cellctl logs --previous` of a container with no previous instance — hung.)
 */
function endWithError(call: { emit(event: 'error', err: Error): boolean }, err: Error): void {
  call.emit('error', err);
}

/** A CelloError as its gRPC status; anything else as it came (grpc-js reports it as it always did). */
function toStreamError(err: unknown): Error {
  return err instanceof CelloError ? toStatus(err) : (err as Error);
}
