// Pods bound to the virtual node: an informer on pods with spec.nodeName=<node> and a watch on
// the controller core's pods feed one work queue; each sync makes the core match the Pod object
// (create; graceful delete) and writes the core's status back to the API server with strategic
// merge patches on the status subresource (conditions merge by type, so the scheduler's
// PodScheduled and other writers' conditions stay). Events from the core are mirrored as
// Kubernetes Events on the pod.
import { status as GrpcStatus, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { PodPhase } from '@cello/proto/cell';
import type { PodObject, PodEvent } from '@cello/proto/controller';
import type { Logger } from '../../obs/logger.js';
import { Informer } from '../client/informer.js';
import { buildPodManifest, LABEL_NODE, ANNOTATION_UID, MissingReferenceError, type IssuedToken, type KPod, type ManifestOptions } from './manifest.js';
import type { EnvVar } from './service-env.js';
import type { KubeRest } from '../client/rest.js';
import { isConflict, isNotFound } from '../client/rest.js';
import { applyReadinessGates, kubeStatus, progressCondition, terminalStatus } from './status.js';
import { podsUsage } from './capacity.js';
import { admissionRejection } from './admission.js';
import { WorkQueue } from '../../util/workqueue.js';
import type { Controller } from '../controller-client.js';
import type { VirtualNodeMetrics } from '../metrics.js';
import { Backoff } from '../../util/backoff.js';

/** Reconnecting the core's pod watch: 200 ms doubling to 10 s while it delivers nothing. */
const CORE_WATCH_RETRY = { baseMs: 200, maxMs: 10_000 };

export interface PodSyncOptions extends ManifestOptions {
  rest: KubeRest;
  controller: Controller;
  log: Logger;
  metrics?: VirtualNodeMetrics;
  /** Fraction of a projected token's lifetime after which it is refreshed (kubelet: 0.8). */
  tokenRefreshRatio?: number;
  /** How often the Secrets and ConfigMaps a running pod references are read again (kubelet: ~60 s). */
  dataSyncSeconds?: number;
  /** The clock token refresh is scheduled by (tests). */
  now?: () => number;
  /** Called when the pods holding cells on this node, or their requests, change. */
  onPodsChanged?: () => void;
}

/** What was last sent to the core for a pod, and when it must be looked at again. */
interface Applied {
  uid: string;
  /** The Pod's spec, labels and annotations as last applied: a change is an in-place update. */
  source: string;
  manifest: string;
  tokens: Map<string, IssuedToken>;
  serviceEnv: EnvVar[];
  nextTokenRefreshAt: number;
  nextDataSyncAt: number;
  /** The last reference error reported on a running pod (reported once, not every sync). */
  lastError?: string;
}

const TERMINAL = new Set(['Succeeded', 'Failed']);

export class PodSync {
  readonly informer: Informer<KPod>;
  private readonly queue: WorkQueue;
  private readonly core = new Map<string, PodObject>();
  private readonly mirroredEvents = new Map<string, number>();
  private readonly lastStatus = new Map<string, string>();
  private readonly applied = new Map<string, Applied>();
  /** Pods this node admitted (key -> uid): they hold their host ports until they end. */
  private readonly admitted = new Map<string, string>();
  private lastUsage = '';
  private readonly now: () => number;
  private coreWatch?: ClientReadableStream<PodEvent>;
  private readonly coreWatchBackoff = new Backoff(CORE_WATCH_RETRY);
  private stopped = false;
  private readonly startedAt = Date.now();
  /** API requests made per pod key (the benchmark's status-write load figure). */
  readonly writes = { statusPatches: 0, events: 0, deletes: 0 };

  constructor(private readonly o: PodSyncOptions) {
    this.now = o.now ?? Date.now;
    this.queue = new WorkQueue(
      async (key) => {
        await this.sync(key);
        o.metrics?.podSyncs.inc({ result: 'ok' });
        o.metrics?.pods.set(this.informer.cache.size);
        const usage = JSON.stringify(podsUsage(this.pods()));
        if (usage !== this.lastUsage) {
          this.lastUsage = usage;
          o.onPodsChanged?.();
        }
      },
      (key, err, ms) => {
        o.metrics?.podSyncs.inc({ result: 'error' });
        o.log.warn({ pod: key, err: (err as Error).message, retryInMs: ms }, 'pod sync failed; retrying');
      },
    );
    this.informer = new Informer<KPod>(
      o.rest,
      '/api/v1/pods',
      `fieldSelector=${encodeURIComponent(`spec.nodeName=${o.nodeName}`)}`,
      (key) => this.queue.add(key),
      (err) => o.log.warn({ err: (err as Error).message }, 'pod watch failed; relisting'),
    );
  }

  async start(): Promise<void> {
    // The cache must be full before the core's pods are looked at: a core pod whose object
    // is not (yet) in the cache would otherwise look deleted and be stopped.
    this.informer.start();
    await this.informer.hasSynced;
    this.watchCore();
  }

  /** The core's pods of this node, kept current by WatchPods (reconnecting with back-off). */
  private watchCore(): void {
    if (this.stopped) return;
    const stream = this.o.controller.client.watchPods({ namespace: '', labelSelector: `${LABEL_NODE}=${this.o.nodeName}` });
    this.coreWatch = stream;
    let got = false;
    stream.on('data', (ev: PodEvent) => {
      got = true;
      const p = ev.pod;
      if (!p?.metadata) return;
      const key = `${p.metadata.namespace}/${p.metadata.name}`;
      if (ev.type === 3 /* DELETED */) this.core.delete(key);
      else this.core.set(key, p);
      this.queue.add(key);
    });
    const again = () => {
      if (this.stopped || this.coreWatch !== stream) return;
      this.coreWatch = undefined;
      // A watch that delivered something starts its back-off over.
      if (got) this.coreWatchBackoff.reset();
      setTimeout(() => this.watchCore(), got ? CORE_WATCH_RETRY.baseMs : this.coreWatchBackoff.next()).unref();
    };
    stream.on('error', (err: ServiceError) => {
      if (err.code !== GrpcStatus.CANCELLED) this.o.log.warn({ err: err.message }, 'controller pod watch failed; reconnecting');
      again();
    });
    stream.on('end', again);
  }

  private async sync(key: string): Promise<void> {
    const [ns, name] = key.split('/') as [string, string];
    const kpod = this.informer.cache.get(key);
    // The watch may lag a write we made; the core is asked directly when it matters.
    const cpod = this.core.get(key) ?? (await this.o.controller.get(ns, name));
    const ours = cpod && cpod.metadata?.labels?.[LABEL_NODE] === this.o.nodeName;
    const cuid = cpod?.metadata?.annotations?.[ANNOTATION_UID];

    if (!kpod) {
      // The object is gone (force-deleted, or we removed it): nothing may keep running.
      if (ours && !cpod.metadata?.deletionTimestamp) {
        await this.o.controller.delete(ns, name, 0);
        this.o.log.info({ pod: key }, 'pod object gone; stopping its cell');
      }
      this.forget(key);
      return;
    }
    const sameIncarnation = ours && cuid === kpod.metadata.uid;
    if (cpod && !sameIncarnation) {
      // A pod of the same name from another incarnation (or not ours): end it first.
      if (!cpod.metadata?.deletionTimestamp) await this.o.controller.delete(ns, name, 0);
      return; // its DELETED event brings us back
    }

    if (kpod.metadata.deletionTimestamp) {
      if (cpod && !cpod.metadata?.deletionTimestamp && !TERMINAL.has(kpod.status?.phase ?? '')) {
        const grace = kpod.metadata.deletionGracePeriodSeconds ?? kpod.spec.terminationGracePeriodSeconds ?? 30;
        await this.o.controller.delete(ns, name, grace);
        await this.event(kpod, 'Normal', 'Killing', `Stopping pod (grace period ${grace}s); its cell ends after`);
        return;
      }
      if (cpod) {
        if (cpod.status) await this.writeStatus(kpod, cpod);
        if (!cpod.metadata?.deletionTimestamp) await this.o.controller.delete(ns, name, 0);
        return; // the core's DELETED event brings us back
      }
      // Its cell is gone: the terminal phase first, as the kubelet, for finalizers that wait on it.
      if (!TERMINAL.has(kpod.status?.phase ?? '')) await this.patchStatus(kpod, terminalStatus(kpod.status));
      await this.removeObject(kpod);
      return;
    }

    if (!cpod) {
      if (TERMINAL.has(kpod.status?.phase ?? '')) return; // finished and its cell is gone
      if (this.admitted.get(key) !== kpod.metadata.uid) {
        // Admission, decided before any await so two pods wanting one port cannot both pass.
        const rejected = admissionRejection(kpod, this.admittedPods(key));
        if (rejected) {
          this.o.log.info({ pod: key, reason: rejected.reason }, 'pod rejected at admission');
          await this.event(kpod, 'Warning', rejected.reason, rejected.message);
          await this.patchStatus(kpod, { phase: 'Failed', ...rejected });
          return;
        }
        this.admitted.set(key, kpod.metadata.uid);
      }
      this.applied.delete(key);
      let built: Applied;
      try {
        built = await this.build(kpod, undefined);
      } catch (err) {
        if (err instanceof MissingReferenceError) {
          await this.event(kpod, 'Warning', 'FailedMount', err.message);
          await this.patchStatus(kpod, {
            phase: 'Pending',
            containerStatuses: kpod.spec.containers.map((c) => ({
              name: c.name,
              image: c.image ?? '',
              imageID: '',
              ready: false,
              restartCount: 0,
              state: { waiting: { reason: 'CreateContainerConfigError', message: err.message } },
            })),
          });
        }
        throw err;
      }
      try {
        await this.o.controller.apply(built.manifest, ns);
        this.applied.set(key, built);
        this.wakeAt(key, built);
      } catch (err) {
        const se = err as ServiceError;
        if (se.code === GrpcStatus.INVALID_ARGUMENT) {
          // The core refuses this spec: say why on the pod, as a kubelet would, and stop retrying.
          await this.event(kpod, 'Warning', 'FailedCreate', se.details);
          await this.patchStatus(kpod, { phase: 'Failed', reason: 'Unsupported', message: `Cello cannot run this pod: ${se.details}` });
          return;
        }
        throw err;
      }
      await this.event(kpod, 'Normal', 'CellRequested', 'Pod accepted by the Cello controller; selecting a cell');
      return;
    }
    await this.writeStatus(kpod, cpod);
    if (!TERMINAL.has(kpod.status?.phase ?? '') && !TERMINAL.has(kubePhase(cpod))) await this.update(kpod);
  }

  /** The pods other than `except` that this node admitted (or whose cells run) and that have not ended. */
  private *admittedPods(except: string): Iterable<KPod> {
    for (const [key, p] of this.informer.cache) {
      if (key === except || TERMINAL.has(p.status?.phase ?? '')) continue;
      if (this.admitted.get(key) === p.metadata.uid || this.core.has(key)) yield p;
    }
  }

  /** The manifest for a pod, reusing its tokens until they are due. */
  private async build(kpod: KPod, prev: Applied | undefined): Promise<Applied> {
    const b = await buildPodManifest(this.o.rest, kpod, this.o, {
      ...(prev ? { cache: prev.tokens, serviceEnv: prev.serviceEnv } : {}),
      ...(this.o.tokenRefreshRatio !== undefined ? { refreshRatio: this.o.tokenRefreshRatio } : {}),
      now: this.now,
    });
    return {
      uid: kpod.metadata.uid,
      source: sourceOf(kpod),
      manifest: b.manifest,
      tokens: b.tokens,
      serviceEnv: b.serviceEnv,
      nextTokenRefreshAt: b.nextTokenRefreshAt,
      nextDataSyncAt: this.now() + (this.o.dataSyncSeconds ?? 60) * 1000,
    };
  }

  /**
   * What a kubelet does for a running pod: the spec changes the API server allows in place
   * (container images, activeDeadlineSeconds, ...), projected tokens refreshed before they
   * expire, and edited Secrets and ConfigMaps, all reach the cell. The core gets the new
   * manifest; the agent restarts only units whose spec changed and rewrites volumes in place.
   */
  private async update(kpod: KPod): Promise<void> {
    const key = `${kpod.metadata.namespace}/${kpod.metadata.name}`;
    const prev = this.applied.get(key);
    const now = this.now();
    const source = sourceOf(kpod);
    const why =
      !prev || prev.uid !== kpod.metadata.uid
        ? 'adopted'
        : prev.source !== source
          ? 'spec'
          : now >= prev.nextTokenRefreshAt
            ? 'token'
            : now >= prev.nextDataSyncAt
              ? 'data'
              : undefined;
    if (!why) return this.wakeAt(key, prev!);
    let next: Applied;
    try {
      next = await this.build(kpod, prev?.uid === kpod.metadata.uid ? prev : undefined);
    } catch (err) {
      if (!(err instanceof MissingReferenceError) || !prev) throw err;
      // As a kubelet: a running pod keeps what it has when a reference vanishes.
      if (prev.lastError !== err.message) await this.event(kpod, 'Warning', 'FailedMount', `${err.message}; the pod keeps its current files`);
      this.applied.set(key, { ...prev, lastError: err.message, nextDataSyncAt: now + (this.o.dataSyncSeconds ?? 60) * 1000 });
      return this.wakeAt(key, this.applied.get(key)!);
    }
    if (next.manifest !== prev?.manifest) {
      try {
        await this.o.controller.apply(next.manifest, kpod.metadata.namespace);
      } catch (err) {
        const se = err as ServiceError;
        if (se.code !== GrpcStatus.INVALID_ARGUMENT) throw err;
        // The core refuses the changed spec: the pod keeps running as it was.
        await this.event(kpod, 'Warning', 'FailedUpdate', `Cello cannot apply this change: ${se.details}`);
        next.manifest = prev?.manifest ?? next.manifest;
      }
      this.o.metrics?.podUpdates.inc({ why });
      if (prev) this.o.log.info({ pod: key, why }, 'pod updated in place');
      if (why === 'spec') await this.event(kpod, 'Normal', 'Updated', 'Pod spec change applied to its cell');
    }
    this.applied.set(key, next);
    this.wakeAt(key, next);
  }

  private wakeAt(key: string, a: Applied): void {
    const at = Math.min(a.nextTokenRefreshAt, a.nextDataSyncAt);
    // setTimeout holds at most ~24.8 days; a wake-up before then only re-checks.
    this.queue.addAfter(key, Math.min(Math.max(0, at - this.now()), 2 ** 31 - 1));
  }

  private async writeStatus(kpod: KPod, cpod: PodObject): Promise<void> {
    const key = `${kpod.metadata.namespace}/${kpod.metadata.name}`;
    await this.mirrorEvents(kpod);
    if (!cpod.status) return;
    // The pod's host is its cell: that is where its hostPorts answer and what its status.hostIP
    // env says.
    const status = kubeStatus(cpod.status, kpod, cpod.status.hostIp);
    applyReadinessGates(status.conditions as Record<string, unknown>[], kpod);
    const progress = progressCondition(cpod.progress);
    if (progress) (status.conditions as unknown[]).push(progress);
    const text = JSON.stringify(status);
    if (this.lastStatus.get(key) === text) return;
    await this.patchStatus(kpod, status);
    this.lastStatus.set(key, text);
  }

  private async patchStatus(kpod: KPod, status: Record<string, unknown>): Promise<void> {
    const path = `/api/v1/namespaces/${kpod.metadata.namespace}/pods/${kpod.metadata.name}/status`;
    this.writes.statusPatches++;
    this.o.metrics?.statusPatches.inc();
    try {
      // The uid precondition keeps a late write from landing on a new pod of the same name.
      await this.o.rest.strategicPatch(path, { metadata: { uid: kpod.metadata.uid }, status });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  private async mirrorEvents(kpod: KPod): Promise<void> {
    const key = `${kpod.metadata.namespace}/${kpod.metadata.name}`;
    let since = this.mirroredEvents.get(key);
    if (since === undefined && Date.parse(kpod.metadata.creationTimestamp ?? '') >= this.startedAt - 5000) since = 0;
    if (since === undefined) {
      // After a restart: what an earlier run already mirrored is in the API, not in memory.
      const prior = await this.o.rest.get<{ items: { lastTimestamp?: string; source?: { component?: string } }[] }>(
        `/api/v1/namespaces/${kpod.metadata.namespace}/events?fieldSelector=${encodeURIComponent(`involvedObject.uid=${kpod.metadata.uid}`)}`,
      );
      since = Math.max(0, ...prior.items.filter((e) => e.source?.component === 'cello-virtual-node' && e.lastTimestamp).map((e) => Date.parse(e.lastTimestamp!)));
    }
    const evs = await this.o.controller.events(kpod.metadata.namespace, kpod.metadata.name);
    let last = since;
    for (const e of evs) {
      const t = e.time ? new Date(e.time).getTime() : 0;
      if (t <= since) continue;
      await this.event(kpod, e.type === 'Warning' ? 'Warning' : 'Normal', e.reason || 'Cello', e.message, e.time ? new Date(e.time) : undefined);
      last = Math.max(last, t);
    }
    this.mirroredEvents.set(key, last);
  }

  /** Records a v1 Event on the pod (best effort: events never block a pod). */
  async event(kpod: KPod, type: 'Normal' | 'Warning', reason: string, message: string, at = new Date()): Promise<void> {
    const ns = kpod.metadata.namespace;
    const ts = at.toISOString();
    this.writes.events++;
    this.o.metrics?.events.inc({ type });
    await this.o.rest
      .post(`/api/v1/namespaces/${ns}/events`, {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { generateName: `${kpod.metadata.name}.`, namespace: ns },
        involvedObject: { apiVersion: 'v1', kind: 'Pod', name: kpod.metadata.name, namespace: ns, uid: kpod.metadata.uid, resourceVersion: kpod.metadata.resourceVersion },
        type,
        reason,
        message,
        source: { component: 'cello-virtual-node', host: this.o.nodeName },
        reportingComponent: 'cello-virtual-node',
        reportingInstance: this.o.nodeName,
        firstTimestamp: ts,
        lastTimestamp: ts,
        count: 1,
      })
      .catch((err: Error) => this.o.log.debug({ err: err.message, reason }, 'event not recorded'));
  }

  /** Graceful deletion's last step: the object goes once its cell has. */
  private async removeObject(kpod: KPod): Promise<void> {
    this.writes.deletes++;
    try {
      await this.o.rest.delete(`/api/v1/namespaces/${kpod.metadata.namespace}/pods/${kpod.metadata.name}`, {
        apiVersion: 'v1',
        kind: 'DeleteOptions',
        gracePeriodSeconds: 0,
        preconditions: { uid: kpod.metadata.uid },
      });
      this.o.log.info({ pod: `${kpod.metadata.namespace}/${kpod.metadata.name}` }, 'pod removed');
    } catch (err) {
      if (isNotFound(err) || isConflict(err)) return;
      throw err;
    }
  }

  private forget(key: string): void {
    this.core.delete(key);
    this.mirroredEvents.delete(key);
    this.lastStatus.delete(key);
    this.applied.delete(key);
    this.admitted.delete(key);
    this.queue.forget(key);
  }

  /** Pods of this node as the kubelet's /pods lists them. */
  pods(): KPod[] {
    return [...this.informer.cache.values()];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.coreWatch?.cancel();
    this.queue.stop();
    await this.informer.stop();
  }
}

function sourceOf(kpod: KPod): string {
  return JSON.stringify([kpod.spec, kpod.metadata.labels ?? {}, kpod.metadata.annotations ?? {}]);
}

/** The core pod's phase as Kubernetes names it (Succeeded/Failed end the pod's updates). */
function kubePhase(cpod: PodObject): string {
  const p = cpod.status?.phase;
  return p === PodPhase.POD_PHASE_SUCCEEDED ? 'Succeeded' : p === PodPhase.POD_PHASE_FAILED ? 'Failed' : '';
}
