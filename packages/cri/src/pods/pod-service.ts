// The CRI RuntimeService's sandboxes and containers, on the Cello controller. A sandbox is a Cello
// pod (applied through the controller API as an authenticated client, like cellctl); its cell is
// the sandbox. A container is a unit of that pod: CreateContainer records it, StartContainer
// applies the pod with it, StopContainer applies the pod without it; every apply carries the whole
// current set, so the cell converges to it. The records live on this node (sandbox-store.ts);
// live state comes from the controller's view of the pod.
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CelloError, errMsg } from '@cello/proto';
import { ExecInput, PodPhase, type ContainerStatus as CelloContainerStatus, type ExecOutput } from '@cello/proto/cell';
import type { PodObject, PodUsage } from '@cello/proto/controller';
import type { ControllerApiClient } from '@cello/controller/client';
import {
  ContainerState,
  NamespaceMode,
  PodSandboxState,
  type Container,
  type ContainerStats,
  type ContainerStatsFilter,
  type ContainerStatusResponse,
  type LinuxContainerResources,
  type PodSandboxStats,
  type PodSandboxStatsFilter,
  type CreateContainerRequest,
  type ExecSyncResponse,
  type ListContainersRequest,
  type ListPodSandboxRequest,
  type PodSandbox,
  type PodSandboxStatusResponse,
  type RunPodSandboxRequest,
} from '../gen/runtime/v1/api.js';
import type { ImageStore } from '../images/image-store.js';
import { findImage } from '../images/names.js';
import { SANDBOX_UNIT, checkSandboxConfig, containerSpec, podManifest, portMappingsOf, resourcesOf, unitName } from './pod-spec.js';
import { newId, type ContainerRecord, type SandboxRecord, type SandboxStore } from './sandbox-store.js';
import { ContainerLogs, logFile } from './container-logs.js';
import { DEFAULT_PODS_ROOT, mapMounts, podDirectoryOf } from './kubelet-mounts.js';
import { writeTerminationMessage } from './termination-log.js';
import { containerStats, sandboxStats, unitUsage } from './stats.js';
import { HostPorts, nodePorts } from './host-ports.js';
import { PodChanges } from './pod-changes.js';

export interface PodServiceOptions {
  controller: ControllerApiClient;
  store: SandboxStore;
  images: ImageStore;
  /** The image of the unit that holds a sandbox's cell (containerd's sandbox_image). */
  sandboxImage: string;
  logger: Logger;
  /** How often a wait re-reads the pod from the controller. */
  pollMs?: number;
  /** The kubelet's pods directory: its volume files of a pod are shipped to the pod's cell. */
  podsRoot?: string;
  /** How often those files are re-read (a rotated token), and the pod re-applied when they changed. */
  volumeSyncMs?: number;
}

/** Waiting reasons that will not resolve by waiting. */
const FATAL_WAITING = new Set(['ErrImagePull', 'ImagePullBackOff', 'InvalidImageName', 'CreateContainerConfigError', 'CreateContainerError', 'ErrImageNeverPull']);

/** How long StopPodSandbox waits for the cell to report its killed containers' exits. */
const KILL_REPORT_MS = 15_000;

/** How long a status call waits for an exited container's last output to reach its log file. */
const LOG_DRAIN_MS = 5000;

const nanos = (iso: string | Date | undefined): bigint => (iso ? BigInt(new Date(iso).getTime()) * 1_000_000n : 0n);

function matchLabels(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** The record `lookup` finds, or undefined where it finds none (NotFound): stop and remove of what is gone succeed. */
function unlessNotFound<T>(lookup: () => T): T | undefined {
  try {
    return lookup();
  } catch (err) {
    if (err instanceof CelloError && err.code === 'NotFound') return undefined;
    throw err;
  }
}

function unitStatus(pod: PodObject | undefined, unit: string): CelloContainerStatus | undefined {
  return pod?.status?.containerStatuses.find((c) => c.name === unit);
}

/** Why a pod failed, from its status and its units' ends. */
function describeFailure(p: PodObject): string {
  const units = (p.status?.containerStatuses ?? []).map((c) => {
    const st = c.state?.state;
    if (st?.$case === 'terminated') return `${c.name} exited ${st.value.exitCode} (${st.value.reason}${st.value.message ? `: ${st.value.message}` : ''})`;
    if (st?.$case === 'waiting') return `${c.name} waiting (${st.value.reason}${st.value.message ? `: ${st.value.message}` : ''})`;
    return `${c.name} ${st?.$case ?? 'unknown'}`;
  });
  return [p.status?.reason, p.status?.message, ...units].filter(Boolean).join('; ') || 'no reason given';
}

export class PodService {
  private readonly poll: number;
  private readonly logs: ContainerLogs;
  private readonly podsRoot: string;
  /** The manifest last applied per sandbox, so the volume sync applies only what changed. */
  private readonly applied = new Map<string, string>();
  private readonly syncTimer: NodeJS.Timeout;
  /** The sandboxes' host ports, listening on this node and relayed to their cells. */
  private readonly hostPorts: HostPorts;
  /** Wakes waits on a pod's change as the controller reports it (else they poll). */
  private readonly changes: PodChanges;
  /** The last read of each pod, reused while the watch says it is current (getPod). */
  private readonly reads = new Map<string, { token: string; pod: PodObject | undefined }>();

  constructor(private readonly o: PodServiceOptions) {
    this.poll = o.pollMs ?? 250;
    this.podsRoot = o.podsRoot ?? DEFAULT_PODS_ROOT;
    this.syncTimer = setInterval(() => void this.syncVolumes(), o.volumeSyncMs ?? 10_000);
    this.syncTimer.unref();
    this.logs = new ContainerLogs(o.controller, o.logger);
    this.hostPorts = new HostPorts(o.logger, (id) => this.podAddress(id));
    this.changes = new PodChanges(o.controller, o.logger);
    // A restarted shim goes on writing the logs of the containers that run (from the file's last write).
    for (const s of o.store.list()) {
      if (s.state !== 'ready') continue;
      for (const c of s.containers) {
        const path = logFile(s.logDirectory, c.logPath);
        if (c.phase === 'started' && path) this.logs.follow(c.id, s.pod, c.unit, path, { resume: true });
      }
      // ... and listens on their host ports again (a port taken meanwhile is said, not fatal).
      if (nodePorts(s.portMappings).length && s.ip)
        this.hostPorts
          .open(s.id, s.portMappings, s.ip)
          .catch((err: unknown) => o.logger.warn({ sandbox: s.id, err: errMsg(err) }, 'cannot listen on the host ports of a running sandbox again'));
    }
  }

  /** Stops writing every log and closes the host ports (the shim's shutdown). */
  async close(): Promise<void> {
    clearInterval(this.syncTimer);
    this.logs.stopAll();
    this.changes.close();
    await this.hostPorts.closeAll();
  }

  reopenContainerLog(id: string): void {
    const { container } = this.container(id);
    if (container.phase !== 'started') throw new CelloError('FailedPrecondition', `container ${id} is not running`);
    this.logs.reopen(container.id);
  }

  private sandbox(id: string, field = 'pod_sandbox_id'): SandboxRecord {
    if (!id) throw new CelloError('InvalidArgument', `${field}: is required`);
    const s = this.o.store.get(id) ?? this.o.store.list().find((x) => x.id.startsWith(id) && id.length >= 6);
    if (!s) throw new CelloError('NotFound', `${field}: no pod sandbox ${id}`);
    return s;
  }

  private container(id: string): { sandbox: SandboxRecord; container: ContainerRecord } {
    if (!id) throw new CelloError('InvalidArgument', 'container_id: is required');
    const hit =
      this.o.store.container(id) ??
      this.o.store.list().flatMap((s) => s.containers.filter((c) => c.id.startsWith(id) && id.length >= 6).map((c) => this.o.store.container(c.id)!))[0];
    if (!hit) throw new CelloError('NotFound', `container_id: no container ${id}`);
    return hit;
  }

  private manifest(s: SandboxRecord, graceSeconds?: number): string {
    const withFiles = s.containers.some((c) => c.phase === 'started' && c.mounts?.length);
    return podManifest(s, {
      sandboxImage: this.o.sandboxImage,
      sysctls: s.sysctls,
      ...(graceSeconds !== undefined ? { graceSeconds } : {}),
      ...(withFiles ? { podDirectory: podDirectoryOf(this.podsRoot, s.metadata.uid) } : {}),
    });
  }

  private async apply(s: SandboxRecord, graceSeconds?: number): Promise<PodObject> {
    const manifest = this.manifest(s, graceSeconds);
    const pod = await this.o.controller.apply(manifest, s.pod.namespace);
    this.applied.set(s.id, this.manifest(s));
    return pod;
  }

  /**
   * Re-reads the kubelet's volume files of every running pod and re-applies a pod whose files
   * changed (the kubelet rotates the service-account token, updates configMaps and secrets); the
   * cell rewrites the files in place, atomically, as the kubelet does.
   */
  private async syncVolumes(): Promise<void> {
    for (const s of this.o.store.list()) {
      if (s.state !== 'ready' || !s.containers.some((c) => c.phase === 'started' && c.mounts?.some((m) => m.kind === 'content'))) continue;
      await this.o.store
        .serialized(async () => {
          const cur = this.o.store.get(s.id);
          if (!cur || cur.state !== 'ready') return;
          if (this.manifest(cur) === this.applied.get(cur.id)) return;
          await this.apply(cur);
          this.o.logger.info({ sandbox: cur.id, pod: `${cur.pod.namespace}/${cur.pod.name}` }, "the kubelet's volume files changed; re-applied the pod");
        })
        .catch((err: unknown) => this.o.logger.warn({ sandbox: s.id, err: errMsg(err) }, "re-shipping the kubelet's volume files failed; the cell keeps the last ones"));
    }
  }

  /** A ready sandbox's pod address ('' when it has none), for a host-port relay that has none yet. */
  private async podAddress(id: string): Promise<string> {
    const s = this.o.store.get(id);
    if (!s || s.state !== 'ready') return '';
    return (await this.getPod(s).catch(() => undefined))?.status?.podIp || s.ip;
  }

  /**
   * The pod as the controller has it. A read is reused while the controller's watch says the pod
   * has not changed since it was made (one relist of the kubelet reads a pod three or four times:
   * ListContainers, PodSandboxStatus, ContainerStatus); without a delivering watch, every call reads.
   */
  private async getPod(s: SandboxRecord): Promise<PodObject | undefined> {
    const { namespace: ns, name } = s.pod;
    const k = `${ns}/${name}`;
    const hit = this.reads.get(k);
    if (hit && this.changes.unchanged(ns, name, hit.token)) return hit.pod;
    const token = this.changes.token(ns, name);
    const pod = await this.o.controller.get(ns, name);
    if (token !== undefined) this.reads.set(k, { token, pod });
    else this.reads.delete(k);
    return pod;
  }

  /** Re-reads the pod until `done` says yes (returns its value), or the call's deadline/cancellation. */
  private async waitPod<T>(s: SandboxRecord, what: string, signal: AbortSignal, done: (p: PodObject | undefined) => T | undefined): Promise<T> {
    let last: PodObject | undefined;
    for (;;) {
      const since = this.changes.count(s.pod.namespace, s.pod.name);
      last = await this.getPod(s);
      const v = done(last);
      if (v !== undefined) return v;
      if (signal.aborted) {
        const p = last?.progress;
        const where = p ? ` (stage ${p.stage}${p.lastError ? `, last error ${p.lastError.reason}: ${p.lastError.message}` : ''})` : '';
        throw new CelloError('DeadlineExceeded', `pod ${s.pod.namespace}/${s.pod.name}: ${what} did not happen before the call's deadline${where}`);
      }
      // The pod's next change (the controller's watch) or the poll interval, whichever is first.
      await this.changes.next(s.pod.namespace, s.pod.name, since, this.poll, signal);
    }
  }

  // ------------------------------------------------------------ sandboxes

  async runPodSandbox(req: RunPodSandboxRequest, signal: AbortSignal): Promise<string> {
    const id = newId();
    const { podName, namespace } = checkSandboxConfig(req.config, req.runtimeHandler, id);
    const c = req.config!;
    const rec: SandboxRecord = {
      version: 1,
      id,
      metadata: { name: c.metadata!.name, uid: c.metadata!.uid, namespace: c.metadata!.namespace, attempt: c.metadata!.attempt },
      pod: { namespace, name: podName },
      hostname: c.hostname,
      logDirectory: c.logDirectory,
      ...(c.dnsConfig ? { dnsConfig: { servers: c.dnsConfig.servers, searches: c.dnsConfig.searches, options: c.dnsConfig.options } } : {}),
      portMappings: portMappingsOf(c),
      labels: c.labels,
      annotations: c.annotations,
      sysctls: c.linux?.sysctls ?? {},
      ...(c.linux?.securityContext?.privileged ? { privileged: true } : {}),
      ...(c.linux?.securityContext?.namespaceOptions?.pid === NamespaceMode.POD ? { sharePid: true } : {}),
      createdAt: new Date().toISOString(),
      state: 'ready',
      ip: '',
      containers: [],
    };
    // The host ports first: one already taken on this node fails the call before a cell is asked for.
    if (nodePorts(rec.portMappings).length) await this.hostPorts.open(id, rec.portMappings);
    await this.o.store.serialized(async () => {
      await this.o.store.put(rec);
      try {
        await this.apply(rec);
      } catch (err) {
        await this.o.store.remove(id);
        await this.hostPorts.close(id);
        throw err;
      }
    });
    this.o.logger.info({ sandbox: id, pod: `${namespace}/${podName}` }, 'sandbox applied; waiting for its cell');
    try {
      const ip = await this.waitPod(rec, 'the sandbox unit running on a cell, with its address', signal, (p) => {
        const u = unitStatus(p, SANDBOX_UNIT);
        const w = u?.state?.state?.$case === 'waiting' ? u.state.state.value : undefined;
        if (w && FATAL_WAITING.has(w.reason)) throw new CelloError('FailedPrecondition', `the sandbox unit (image ${this.o.sandboxImage}) cannot start: ${w.reason}: ${w.message}`);
        if (p?.status?.phase === PodPhase.POD_PHASE_FAILED) throw new CelloError('FailedPrecondition', `the sandbox's pod failed: ${describeFailure(p)}`);
        // Up means the unit runs and the pod has its address (the status carries both; the address
        // can come a moment later): the sandbox's status and its host ports need it.
        return u?.state?.state?.$case === 'running' && p?.status?.podIp ? p.status.podIp : undefined;
      });
      await this.o.store.serialized(async () => {
        const cur = this.o.store.get(id);
        if (cur) await this.o.store.put({ ...cur, ip });
      });
      this.hostPorts.setTarget(id, ip);
      return id;
    } catch (err) {
      // A sandbox that did not come up is not left behind: its cell ends, its record goes.
      this.o.logger.warn({ sandbox: id, err: errMsg(err) }, 'sandbox failed to start; ending its cell');
      await this.hostPorts.close(id);
      await this.o.controller.delete(namespace, podName, 0).catch(() => undefined);
      await this.o.store.serialized(() => this.o.store.remove(id));
      throw err;
    }
  }

  async podSandboxStatus(id: string, verbose: boolean): Promise<PodSandboxStatusResponse> {
    const s = this.sandbox(id);
    const pod = s.state === 'ready' ? await this.getPod(s) : undefined;
    const alive = s.state === 'ready' && pod !== undefined && !pod.metadata?.deletionTimestamp && pod.status?.phase !== PodPhase.POD_PHASE_FAILED;
    const ip = pod?.status?.podIp || s.ip;
    const info: Record<string, string> = {};
    if (verbose) {
      info.info = JSON.stringify({
        pod: s.pod,
        cellId: pod?.cellId ?? '',
        instanceType: pod?.instanceType ?? '',
        phase: pod?.status?.phase !== undefined ? PodPhase[pod.status.phase] : 'gone',
        hostname: s.hostname,
        logDirectory: s.logDirectory,
        dnsConfig: s.dnsConfig ?? null,
        portMappings: s.portMappings,
        sysctls: s.sysctls,
      });
    }
    return {
      status: {
        id: s.id,
        metadata: s.metadata,
        state: alive ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY,
        createdAt: nanos(s.createdAt),
        network: { ip, additionalIps: (pod?.status?.podIps ?? []).filter((x) => x !== ip).map((x) => ({ ip: x })) },
        linux: { namespaces: { options: { network: 0, pid: s.sharePid ? NamespaceMode.POD : NamespaceMode.CONTAINER, ipc: 0, targetId: '', usernsOptions: undefined } } },
        labels: s.labels,
        annotations: s.annotations,
        runtimeHandler: '',
      },
      info,
      containersStatuses: [],
      timestamp: 0n,
    };
  }

  listPodSandbox(req: ListPodSandboxRequest): PodSandbox[] {
    const f = req.filter;
    return this.o.store
      .list()
      .filter((s) => !f?.id || s.id.startsWith(f.id))
      .filter((s) => !f?.state || (s.state === 'ready' ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY) === f.state.state)
      .filter((s) => !f || matchLabels(f.labelSelector, s.labels))
      .map((s) => ({
        id: s.id,
        metadata: s.metadata,
        state: s.state === 'ready' ? PodSandboxState.SANDBOX_READY : PodSandboxState.SANDBOX_NOTREADY,
        createdAt: nanos(s.createdAt),
        labels: s.labels,
        annotations: s.annotations,
        runtimeHandler: '',
      }));
  }

  /** Ends the sandbox's cell (its containers are killed, as containerd stops them with no grace); idempotent. */
  async stopPodSandbox(id: string, signal: AbortSignal): Promise<void> {
    const s = unlessNotFound(() => this.sandbox(id));
    if (!s) return; // idempotent, as the CRI asks
    // A stopped sandbox serves nothing on this node, whatever happens to its cell below.
    await this.hostPorts.close(s.id);
    const last = await this.getPod(s);
    if (s.state === 'notready' && !last) return;
    const ends = last && s.state === 'ready' ? await this.killContainers(s, last, signal) : new Map<string, CelloContainerStatus>();
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(s.id)!;
      const now = new Date().toISOString();
      const containers = cur.containers.map((c) =>
        c.phase === 'exited' ? c : this.exited(c, ends.get(c.id) ?? unitStatus(last, c.unit), now, 'the sandbox was stopped (its cell ended)'),
      );
      await this.o.store.put({ ...cur, state: 'notready', containers, ip: last?.status?.podIp || cur.ip });
    });
    await this.o.controller.delete(s.pod.namespace, s.pod.name, 0);
    await this.waitPod(s, 'the pod and its cell gone', signal, (p) => (p === undefined ? true : undefined));
    for (const c of s.containers) this.logs.stop(c.id);
    this.o.logger.info({ sandbox: s.id, pod: `${s.pod.namespace}/${s.pod.name}` }, 'sandbox stopped; its cell ended');
  }

  /**
   * Stops a sandbox's running containers before its cell ends, as containerd does (no grace), so
   * their real exits are recorded: the pod is applied without them and the cell reports each one
   * it dropped with its final state. Bounded: a unit whose end is not reported within
   * KILL_REPORT_MS is recorded as unknown by the caller, never invented.
   */
  private async killContainers(s: SandboxRecord, pod: PodObject, signal: AbortSignal): Promise<Map<string, CelloContainerStatus>> {
    const running = s.containers.filter((c) => c.phase === 'started' && unitStatus(pod, c.unit)?.state?.state?.$case !== 'terminated');
    const ends = new Map<string, CelloContainerStatus>();
    if (!running.length) return ends;
    const stopping = new Set(running.map((c) => c.id));
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(s.id);
      if (cur) await this.apply({ ...cur, containers: cur.containers.filter((c) => !stopping.has(c.id)) }, 0);
    });
    // A controller and a timer of our own, not AbortSignal.any([signal, AbortSignal.timeout()]):
    // a composed timeout signal nothing else references can be collected before it fires, and
    // the wait then ran to the call's own deadline (crictl rmp failed after 120 s, now and then).
    const bounded = new AbortController();
    const onAbort = () => bounded.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => bounded.abort(new Error(`no report within ${KILL_REPORT_MS} ms`)), KILL_REPORT_MS);
    try {
      await this.waitPod(s, 'its containers stopped', bounded.signal, (p) => {
        for (const c of running) {
          const st = p?.status?.removedContainerStatuses.find((x) => x.name === c.unit) ?? unitStatus(p, c.unit);
          if (st?.state?.state?.$case === 'terminated') ends.set(c.id, st);
        }
        return !p || ends.size === running.length ? true : undefined;
      });
    } catch (err) {
      if (signal.aborted) throw err;
      this.o.logger.info({ sandbox: s.id, reported: ends.size, of: running.length }, "not every container's end was reported in time; the sandbox stops regardless");
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
    return ends;
  }

  async removePodSandbox(id: string, signal: AbortSignal): Promise<void> {
    const s = unlessNotFound(() => this.sandbox(id));
    if (!s) return; // idempotent, as the CRI asks
    await this.stopPodSandbox(s.id, signal);
    await this.o.store.serialized(() => this.o.store.remove(s.id));
    this.applied.delete(s.id);
    this.changes.forget(s.pod.namespace, s.pod.name);
    this.reads.delete(`${s.pod.namespace}/${s.pod.name}`);
  }

  // ------------------------------------------------------------ containers

  /** The record of a container that ended: its real exit when the cell reported one, else said to be unknown. */
  private exited(c: ContainerRecord, live: CelloContainerStatus | undefined, now: string, why: string): ContainerRecord {
    const t = live?.state?.state?.$case === 'terminated' ? live.state.state.value : undefined;
    if (t) {
      return {
        ...c,
        phase: 'exited',
        exitCode: t.exitCode,
        reason: t.reason,
        message: writeTerminationMessage(c, t.message, this.o.logger),
        ...(t.startedAt ? { startedAt: t.startedAt.toISOString() } : {}),
        finishedAt: (t.finishedAt ?? new Date(now)).toISOString(),
      };
    }
    // The cell does not report the exit of a unit it stopped and dropped: said so, not invented.
    return { ...c, phase: 'exited', exitCode: -1, reason: 'Unknown', message: `${why}; the exit code of a unit stopped this way is not reported by its cell`, finishedAt: now };
  }

  async createContainer(req: CreateContainerRequest): Promise<string> {
    const s = this.sandbox(req.podSandboxId);
    if (s.state !== 'ready') throw new CelloError('FailedPrecondition', `pod_sandbox_id: sandbox ${s.id} is not ready (stopped)`);
    const config = req.config;
    if (!config) throw new CelloError('InvalidArgument', 'config: is required');
    const image = config.image?.image ?? '';
    if (!image) throw new CelloError('InvalidArgument', 'config.image.image: is required');
    const unit = unitName(config);
    // An image this node pulled is sent to the cell by its repo digest: the exact image the kubelet checked.
    const rec = findImage(this.o.images, image, 'config.image.image');
    const imageRef = rec?.repoDigests[0] ?? image;
    const mounts = mapMounts(config.mounts, { podsRoot: this.podsRoot, podUid: s.metadata.uid });
    const spec = containerSpec(config, unit, imageRef, mounts, s.privileged ?? false);
    const id = newId();
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(s.id);
      if (!cur) throw new CelloError('NotFound', `pod_sandbox_id: no pod sandbox ${s.id}`);
      if (cur.containers.some((c) => c.unit === unit))
        throw new CelloError('AlreadyExists', `config.metadata: sandbox ${s.id} already has a container named ${config.metadata!.name} with attempt ${config.metadata!.attempt}`);
      const c: ContainerRecord = {
        id,
        unit,
        name: config.metadata!.name,
        attempt: config.metadata!.attempt,
        image,
        imageRef,
        imageId: rec?.id ?? '',
        labels: config.labels,
        annotations: config.annotations,
        logPath: config.logPath,
        spec,
        ...(mounts.length ? { mounts } : {}),
        createdAt: new Date().toISOString(),
        phase: 'created',
      };
      await this.o.store.put({ ...cur, containers: [...cur.containers, c] });
    });
    return id;
  }

  async startContainer(id: string, signal: AbortSignal): Promise<void> {
    const { sandbox, container } = this.container(id);
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(sandbox.id)!;
      const c = cur.containers.find((x) => x.id === container.id)!;
      if (cur.state !== 'ready') throw new CelloError('FailedPrecondition', `container ${id}: its sandbox is stopped`);
      if (c.phase !== 'created')
        throw new CelloError('FailedPrecondition', `container ${id} is ${c.phase === 'started' ? 'already started' : 'exited'}; only a created container starts`);
      const next = { ...cur, containers: cur.containers.map((x) => (x.id === c.id ? { ...x, phase: 'started' as const } : x)) };
      await this.o.store.put(next);
      await this.apply(next);
    });
    const path = logFile(sandbox.logDirectory, container.logPath);
    // The file exists once the container is started, as the kubelet expects; lines follow once the cell has the unit.
    if (path) this.logs.create(path);
    let started: Date | undefined;
    try {
      started = await this.waitPod(sandbox, `container ${container.unit} running`, signal, (p) => {
        const st = unitStatus(p, container.unit)?.state?.state;
        if (st?.$case === 'waiting' && FATAL_WAITING.has(st.value.reason))
          throw new CelloError('FailedPrecondition', `container ${container.name}: ${st.value.reason}: ${st.value.message}`);
        if (st?.$case === 'running') return st.value.startedAt ?? new Date();
        if (st?.$case === 'terminated') {
          if (st.value.reason === 'StartError' || st.value.reason === 'ContainerCannotRun')
            throw new CelloError('FailedPrecondition', `container ${container.name}: ${st.value.reason}: ${st.value.message}`);
          return st.value.startedAt ?? new Date();
        }
        return undefined;
      });
    } catch (err) {
      // Not started: the container is recorded as exited with the reason, and leaves the pod.
      const why = errMsg(err);
      await this.o.store.serialized(async () => {
        const cur = this.o.store.get(sandbox.id);
        if (!cur) return;
        const next = {
          ...cur,
          containers: cur.containers.map((x) =>
            x.id === container.id ? { ...x, phase: 'exited' as const, exitCode: 128, reason: 'StartError', message: why, finishedAt: new Date().toISOString() } : x,
          ),
        };
        await this.o.store.put(next);
        if (cur.state === 'ready') await this.apply(next).catch(() => undefined);
      });
      throw err;
    }
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(sandbox.id);
      if (!cur) return;
      await this.o.store.put({ ...cur, containers: cur.containers.map((x) => (x.id === container.id ? { ...x, startedAt: started.toISOString() } : x)) });
    });
    if (path) this.logs.follow(container.id, sandbox.pod, container.unit, path);
  }

  /** Applies the pod without the container (the cell stops it: SIGTERM, SIGKILL after `timeout` s); idempotent. */
  async stopContainer(id: string, timeoutSeconds: number, signal: AbortSignal): Promise<void> {
    const hit = unlessNotFound(() => this.container(id));
    if (!hit) return; // idempotent, as the CRI asks
    const { sandbox, container } = hit;
    if (container.phase === 'exited') return;
    const live = container.phase === 'started' && sandbox.state === 'ready' ? unitStatus(await this.getPod(sandbox), container.unit) : undefined;
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(sandbox.id)!;
      const now = new Date().toISOString();
      const next = {
        ...cur,
        containers: cur.containers.map((x) =>
          x.id !== container.id
            ? x
            : x.phase === 'created'
              ? { ...x, phase: 'exited' as const, exitCode: 0, reason: 'NeverStarted', message: 'stopped before it was started', finishedAt: now }
              : this.exited(x, live, now, 'stopped by StopContainer'),
        ),
      };
      await this.o.store.put(next);
      if (container.phase === 'started' && cur.state === 'ready') await this.apply(next, Math.max(0, timeoutSeconds));
    });
    if (container.phase === 'started' && sandbox.state === 'ready') {
      // The cell reports a unit an apply left out with its final state (removed_container_statuses):
      // the real exit, recorded once it has stopped. An agent that does not report it leaves -1.
      const end = await this.waitPod(sandbox, `container ${container.unit} stopped`, signal, (p): CelloContainerStatus | null | undefined => {
        if (!p) return null;
        const removed = p.status?.removedContainerStatuses.find((c) => c.name === container.unit);
        if (removed) return removed.state?.state?.$case === 'terminated' ? removed : undefined;
        const st = unitStatus(p, container.unit);
        if (!st) return null;
        return st.state?.state?.$case === 'terminated' ? st : undefined;
      });
      if (end && live?.state?.state?.$case !== 'terminated') {
        await this.o.store.serialized(async () => {
          const cur = this.o.store.get(sandbox.id);
          if (!cur) return;
          const now = new Date().toISOString();
          await this.o.store.put({ ...cur, containers: cur.containers.map((x) => (x.id === container.id ? this.exited(x, end, now, 'stopped by StopContainer') : x)) });
        });
      }
    }
  }

  async removeContainer(id: string, signal: AbortSignal): Promise<void> {
    const hit = unlessNotFound(() => this.container(id));
    if (!hit) return; // idempotent, as the CRI asks
    await this.stopContainer(hit.container.id, 0, signal);
    this.logs.stop(hit.container.id);
    await this.o.store.serialized(async () => {
      const cur = this.o.store.get(hit.sandbox.id);
      if (cur) await this.o.store.put({ ...cur, containers: cur.containers.filter((c) => c.id !== hit.container.id) });
    });
  }

  /** A container's CRI state and times: its record, and the cell's live status while it runs. */
  private view(
    c: ContainerRecord,
    pod: PodObject | undefined,
  ): { state: ContainerState; startedAt: bigint; finishedAt: bigint; exitCode: number; reason: string; message: string } {
    const rec = { startedAt: nanos(c.startedAt), finishedAt: nanos(c.finishedAt), exitCode: c.exitCode ?? 0, reason: c.reason ?? '', message: c.message ?? '' };
    if (c.phase === 'created') return { ...rec, state: ContainerState.CONTAINER_CREATED };
    if (c.phase === 'exited') return { ...rec, state: ContainerState.CONTAINER_EXITED };
    const st = unitStatus(pod, c.unit)?.state?.state;
    if (st?.$case === 'running') return { ...rec, state: ContainerState.CONTAINER_RUNNING, startedAt: nanos(st.value.startedAt) || rec.startedAt };
    if (st?.$case === 'terminated') {
      const t = st.value;
      return {
        state: ContainerState.CONTAINER_EXITED,
        startedAt: nanos(t.startedAt) || rec.startedAt,
        finishedAt: nanos(t.finishedAt),
        exitCode: t.exitCode,
        reason: t.reason,
        message: writeTerminationMessage(c, t.message, this.o.logger),
      };
    }
    if (st?.$case === 'waiting') return { ...rec, state: ContainerState.CONTAINER_CREATED, reason: st.value.reason, message: st.value.message };
    return { ...rec, state: ContainerState.CONTAINER_UNKNOWN, reason: 'Unknown', message: pod ? "the cell's pod does not list this unit" : "the sandbox's pod is gone" };
  }

  async containerStatus(id: string, verbose: boolean): Promise<ContainerStatusResponse> {
    const { sandbox, container: c } = this.container(id);
    const pod = c.phase === 'started' && sandbox.state === 'ready' ? await this.getPod(sandbox) : undefined;
    if (unitStatus(pod, c.unit)?.state?.state?.$case === 'terminated') await this.logs.drained(c.id, LOG_DRAIN_MS);
    const v = this.view(c, pod);
    const info: Record<string, string> = {};
    if (verbose) info.info = JSON.stringify({ sandboxId: sandbox.id, pod: sandbox.pod, unit: c.unit, cellId: pod?.cellId ?? '', spec: c.spec });
    return {
      status: {
        id: c.id,
        metadata: { name: c.name, attempt: c.attempt },
        state: v.state,
        createdAt: nanos(c.createdAt),
        startedAt: v.startedAt,
        finishedAt: v.finishedAt,
        exitCode: v.exitCode,
        image: { image: c.image, annotations: {}, userSpecifiedImage: c.image, runtimeHandler: '' },
        imageRef: c.imageId || c.imageRef,
        reason: v.reason,
        message: v.message,
        labels: c.labels,
        annotations: c.annotations,
        // The kubelet reads the termination message from the host path of the termination-log mount.
        mounts: (c.mounts ?? []).map((m) => ({
          containerPath: m.containerPath,
          hostPath: m.hostPath,
          readonly: m.readonly,
          selinuxRelabel: false,
          propagation: 0,
          uidMappings: [],
          gidMappings: [],
          recursiveReadOnly: false,
          image: undefined,
          imageSubPath: '',
        })),
        // The full path, as containerd reports it (crictl logs reads the file from it).
        logPath: logFile(sandbox.logDirectory, c.logPath) ?? c.logPath,
        resources: undefined,
        imageId: c.imageId,
        user: undefined,
        stopSignal: 0,
      },
      info,
    };
  }

  async listContainers(req: ListContainersRequest): Promise<Container[]> {
    const f = req.filter;
    const sandboxes = this.o.store.list().filter((s) => !f?.podSandboxId || s.id.startsWith(f.podSandboxId));
    const pods = new Map<string, PodObject | undefined>();
    await Promise.all(sandboxes.filter((s) => s.state === 'ready' && s.containers.some((c) => c.phase === 'started')).map(async (s) => pods.set(s.id, await this.getPod(s))));
    const out: Container[] = [];
    for (const s of sandboxes) {
      for (const c of s.containers) {
        if (f?.id && !c.id.startsWith(f.id)) continue;
        if (f && !matchLabels(f.labelSelector, c.labels)) continue;
        if (unitStatus(pods.get(s.id), c.unit)?.state?.state?.$case === 'terminated') await this.logs.drained(c.id, LOG_DRAIN_MS);
        const v = this.view(c, pods.get(s.id));
        if (f?.state && f.state.state !== v.state) continue;
        out.push({
          id: c.id,
          podSandboxId: s.id,
          metadata: { name: c.name, attempt: c.attempt },
          image: { image: c.image, annotations: {}, userSpecifiedImage: c.image, runtimeHandler: '' },
          imageRef: c.imageId || c.imageRef,
          state: v.state,
          createdAt: nanos(c.createdAt),
          labels: c.labels,
          annotations: c.annotations,
          imageId: c.imageId,
        });
      }
    }
    return out;
  }

  // ------------------------------------------------------------ stats and resources

  /**
   * The usage of the given sandboxes' pods from their agents (the controller's TopPods, one call
   * per namespace), by pod; `unavailable` names the pods whose agent did not answer, and why.
   */
  private async usage(sandboxes: SandboxRecord[]): Promise<{ byPod: Map<string, PodUsage>; unavailable: Map<string, string> }> {
    const live = sandboxes.filter((s) => s.state === 'ready');
    const byPod = new Map<string, PodUsage>();
    const unavailable = new Map<string, string>();
    await Promise.all(
      [...new Set(live.map((s) => s.pod.namespace))].map(async (ns) => {
        const r = await this.o.controller.topPods(ns);
        for (const p of r.pods) byPod.set(`${p.pod?.namespace}/${p.pod?.name}`, p);
        for (const u of r.unavailable) {
          const i = u.indexOf(': ');
          unavailable.set(i < 0 ? u : u.slice(0, i), u);
        }
      }),
    );
    return { byPod, unavailable };
  }

  private usageOf(u: { byPod: Map<string, PodUsage>; unavailable: Map<string, string> }, s: SandboxRecord, strict: boolean): PodUsage | undefined {
    const key = `${s.pod.namespace}/${s.pod.name}`;
    const why = u.unavailable.get(key);
    if (why) {
      if (strict) throw new CelloError('Unavailable', `no statistics for sandbox ${s.id}: ${why}`);
      this.o.logger.warn({ sandbox: s.id, why }, 'no statistics for a sandbox; listed without usage');
    }
    return u.byPod.get(key);
  }

  async containerStats(id: string): Promise<ContainerStats> {
    const { sandbox, container } = this.container(id);
    const running = container.phase === 'started' && sandbox.state === 'ready';
    const pod = running ? this.usageOf(await this.usage([sandbox]), sandbox, true) : undefined;
    return containerStats(container, unitUsage(pod, container));
  }

  async listContainerStats(f: ContainerStatsFilter | undefined): Promise<ContainerStats[]> {
    const sandboxes = this.o.store.list().filter((s) => !f?.podSandboxId || s.id.startsWith(f.podSandboxId));
    const pick = (c: ContainerRecord) => (!f?.id || c.id.startsWith(f.id)) && (!f || matchLabels(f.labelSelector, c.labels));
    const wanted = sandboxes.filter((s) => s.containers.some((c) => pick(c) && c.phase === 'started'));
    const u = await this.usage(wanted);
    return sandboxes.flatMap((s) => {
      const pod = wanted.includes(s) ? this.usageOf(u, s, false) : undefined;
      return s.containers.filter(pick).map((c) => containerStats(c, unitUsage(s.state === 'ready' ? pod : undefined, c)));
    });
  }

  async podSandboxStats(id: string): Promise<PodSandboxStats> {
    const s = this.sandbox(id);
    const pod = s.state === 'ready' ? this.usageOf(await this.usage([s]), s, true) : undefined;
    return sandboxStats(s, pod);
  }

  async listPodSandboxStats(f: PodSandboxStatsFilter | undefined): Promise<PodSandboxStats[]> {
    const sandboxes = this.o.store.list().filter((s) => (!f?.id || s.id.startsWith(f.id)) && (!f || matchLabels(f.labelSelector, s.labels)));
    const u = await this.usage(sandboxes);
    return sandboxes.map((s) => sandboxStats(s, s.state === 'ready' ? this.usageOf(u, s, false) : undefined));
  }

  /**
   * The cell was chosen and sized for the pod's resources, and a unit whose resources change is
   * a new unit (a restart), not an in-place update: resources equal to the container's are
   * accepted (nothing to do), any change is refused saying so, never ignored.
   */
  updateContainerResources(id: string, linux: LinuxContainerResources | undefined, windows: unknown): void {
    const { container } = this.container(id);
    if (windows) throw new CelloError('InvalidArgument', 'windows: cells are Linux');
    if (!linux) throw new CelloError('InvalidArgument', 'linux: is required');
    const want = JSON.stringify(resourcesOf(linux) ?? null);
    const have = JSON.stringify(container.spec.resources ?? null);
    if (want !== have)
      throw new CelloError(
        'FailedPrecondition',
        `linux: container ${container.name}'s resources cannot change in place (from ${have} to ${want}): its pod's cell was sized for them; recreate the container or the pod`,
      );
  }

  /** Runs a command in the container through the controller's exec relay; `timeoutSeconds` 0 is no timeout. */
  /** The cell unit a streaming Exec/Attach reaches: the container must be running (containerd refuses the same). */
  streamTarget(id: string): { ns: string; pod: string; container: string } {
    const { sandbox, container } = this.container(id);
    if (container.phase !== 'started' || sandbox.state !== 'ready') throw new CelloError('FailedPrecondition', `container ${id} is not running`);
    return { ns: sandbox.pod.namespace, pod: sandbox.pod.name, container: container.unit };
  }

  /** The cell a PortForward reaches: the sandbox must be ready. */
  sandboxTarget(id: string): { ns: string; pod: string } {
    const s = this.sandbox(id);
    if (s.state !== 'ready') throw new CelloError('FailedPrecondition', `pod sandbox ${s.id} is not ready`);
    return { ns: s.pod.namespace, pod: s.pod.name };
  }

  async execSync(id: string, cmd: string[], timeoutSeconds: number, signal: AbortSignal): Promise<ExecSyncResponse> {
    const { sandbox, container } = this.container(id);
    if (!cmd.length) throw new CelloError('InvalidArgument', 'cmd: is required');
    if (container.phase !== 'started' || sandbox.state !== 'ready') throw new CelloError('FailedPrecondition', `container ${id} is not running`);
    const stream = this.o.controller.client.exec();
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    return new Promise<ExecSyncResponse>((resolve, reject) => {
      let exit: { exitCode: number } | undefined;
      let timedOut = false;
      const timer = timeoutSeconds > 0 ? setTimeout(() => ((timedOut = true), stream.cancel()), timeoutSeconds * 1000) : undefined;
      const onAbort = () => stream.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
      const finish = (err?: Error) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        if (timedOut) return reject(new CelloError('DeadlineExceeded', `ExecSync ${JSON.stringify(cmd)} in container ${container.name}: timed out after ${timeoutSeconds}s`));
        if (exit) return resolve({ stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr), exitCode: exit.exitCode });
        reject(err ?? new CelloError('Unavailable', `ExecSync in container ${container.name}: the stream ended without an exit status`));
      };
      stream.on('data', (out: ExecOutput) => {
        const fr = out.frame;
        if (fr?.$case === 'stdout') stdout.push(fr.value);
        else if (fr?.$case === 'stderr') stderr.push(fr.value);
        else if (fr?.$case === 'exit') exit = { exitCode: fr.value.signal ? 128 + (SIGNALS[fr.value.signal] ?? 1) : fr.value.exitCode };
      });
      stream.on('end', () => finish());
      stream.on('error', (err: ServiceError) => (err.code === GrpcStatus.CANCELLED || exit ? finish() : finish(err)));
      stream.write({ frame: { $case: 'target', value: sandbox.pod } });
      stream.write({
        frame: { $case: 'input', value: ExecInput.fromPartial({ frame: { $case: 'start', value: { container: container.unit, command: cmd, tty: false, stdin: false } } }) },
      });
    });
  }
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };
