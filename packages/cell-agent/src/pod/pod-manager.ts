// The pod on this cell: applies desired specs (diff and converge), runs init units in order and
// then the units, builds volumes (each unit's OCI spec comes from container-config.ts),
// computes the pod status and pushes every change to watchers. Survives an agent restart by
// re-adopting units from the state dir.
import { CelloError } from '@cello/proto';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type pino from 'pino';
import {
  ApplyPodRequest,
  type ApplyPodResponse,
  Container,
  type Event,
  type GetStatusResponse,
  type PodStatus,
  PodPhase,
  PodSecurityContext,
  type Pod,
  RestartPolicy,
} from '@cello/proto/cell';
import type { CgroupDriver } from '../cgroups/driver.js';
import type { ImageInfo, ImageService } from '../images/image-service.js';
import type { Instance } from '../runtime/instance.js';
import type { Runc } from '../runtime/runc.js';
import { FifoPool } from '../runtime/fifo-pool.js';
import { ShimPool } from '../runtime/shim-pool.js';
import { removeStagedSubPaths } from '../runtime/subpath-mount.js';
import type { LogSink, UnitDirectory, UnitView } from '../units/unit-view.js';
import { type BackoffPolicy, KUBERNETES_BACKOFF } from './backoff.js';
import { writePodFiles, type PodFiles } from './pod-files.js';
import { Conditions, podPhase, qosClass, withDefaultWaitingReason } from './pod-status.js';
import { buildContainerConfig } from './container-config.js';
import { ImageManager } from './image-manager.js';
import { SharedPidNamespace } from './pid-namespace.js';
import { limitedEmptyDirs, overLimit } from './emptydir-limits.js';
import { Unit, type UnitContext } from './unit.js';
import { readUnitRecord } from './unit-record.js';
import { InvalidPodError, validateApply } from './validate.js';
import { hostPortMappings, type HostPortMapping } from '../network/hostports.js';
import { type PreparedVolume, removeVolumes, VolumeBuilder, VolumeError } from './volumes.js';

/** Per-unit log storage: one per unit, a sink per instance. */
export interface UnitLogs {
  startInstance(): LogSink;
  close(): void;
}

export interface PodManagerOptions {
  stateDir: string;
  /**
   * Per-boot files on a tmpfs (pod files, FIFOs, instance control files): they must outlive
   * the agent but not the machine, and a tmpfs spares them the disk's journal.
   */
  runDir?: string;
  runc: Runc;
  cgroups: CgroupDriver;
  images: ImageService;
  logger: pino.Logger;
  /** cgroup under which the pod's units go, e.g. /cello/pod. */
  cgroupParent: string;
  netnsPath: string | undefined;
  podIP: string;
  hostIP: string;
  /** Programs the pod's hostPorts on the cell's addresses (network/hostports.ts); none: refused. */
  hostPorts?: { sync(mappings: readonly HostPortMapping[]): Promise<void> };
  seccompProfileDir: string;
  pidsLimit?: number | undefined;
  backoff?: BackoffPolicy;
  /** Period of the emptyDir sizeLimit check (default 10 s, the kubelet's eviction period). */
  emptyDirCheckMs?: number;
  /** Milliseconds per probe "second": 1000 in production, smaller in tests. */
  probeSecondMs?: number;
  /** Where each unit's logs go; called once per unit with its state dir. */
  logsFor?: (unit: string, dir: string) => UnitLogs;
  onPull?: (p: { ok: boolean; bytes: number; seconds: number }) => void;
  onProbe?: (unit: string, probe: 'startup' | 'liveness' | 'readiness', ok: boolean) => void;
}

/** An ApplyPod older than what is applied: the caller's view is stale. */
export class GenerationError extends CelloError {
  constructor(message: string) {
    super('FailedPrecondition', message);
  }
}

const NULL_SINK: LogSink = { write() {}, end() {} };

function hashContainer(c: Container, podSc: PodSecurityContext | undefined): string {
  const h = createHash('sha256');
  h.update(Container.encode(c).finish());
  if (podSc) h.update(PodSecurityContext.encode(podSc).finish());
  return h.digest('hex').slice(0, 16);
}

export class PodManager extends EventEmitter implements UnitDirectory {
  private req: ApplyPodRequest | undefined;
  private generation = 0;
  private initUnits: Unit[] = [];
  private units: Unit[] = [];
  /** spec.ephemeralContainers (kubectl debug): started once the pod has initialized, never restarted. */
  private ephemeralUnits: Unit[] = [];
  /** Main units an apply left out: they are stopped, and their final status is reported until their name comes back. */
  private removedUnits = new Map<string, Unit>();
  private volumes = new Map<string, PreparedVolume | VolumeError>();
  private podFiles: PodFiles | undefined;
  private readonly conditions = new Conditions();
  private startTime: Date | undefined;
  private readonly images: ImageManager;
  private logs = new Map<string, UnitLogs>();
  private changeQueued = false;
  private sequencer: Promise<void> = Promise.resolve();
  private initRun = 0;
  private readonly unitCtx: UnitContext;
  private stopping = new Set<Promise<void>>();
  private deadlineTimer: NodeJS.Timeout | undefined;
  private deadlineExceeded = false;
  private sidecarsStopped = false;
  private evictionTimer: NodeJS.Timeout | undefined;
  /** Set once the pod was evicted (an emptyDir over its sizeLimit): the kubelet's message. */
  private evicted: string | undefined;
  private readonly sharedPid: SharedPidNamespace;
  /** The pod's shared PID namespace while spec.shareProcessNamespace is set. */
  private pidnsPath: string | undefined;

  constructor(private readonly o: PodManagerOptions) {
    super();
    this.setMaxListeners(0);
    this.images = new ImageManager({
      images: o.images,
      backoff: o.backoff ?? KUBERNETES_BACKOFF,
      credentials: () => this.req?.registryCredentials ?? [],
      event: (type, reason, message, container) => this.event(type, reason, message, container),
      onPull: o.onPull,
    });
    this.sharedPid = new SharedPidNamespace(join(o.stateDir, 'pid-namespace'));
    this.unitCtx = {
      logger: o.logger,
      runc: o.runc,
      cgroups: o.cgroups,
      backoff: o.backoff ?? KUBERNETES_BACKOFF,
      probeSecondMs: o.probeSecondMs ?? 1000,
      pidsLimit: o.pidsLimit,
      restartPolicy: () => this.req?.pod?.spec?.restartPolicy ?? RestartPolicy.RESTART_POLICY_ALWAYS,
      podIP: () => this.o.podIP,
      ensureImage: (u, s) => this.images.ensure(u, s),
      buildSpec: (u, i, inst) => this.buildUnitSpec(u, i, inst),
      newSink: (u) => this.logsOf(u).startInstance(),
      changed: () => this.changed(),
      event: (type, reason, message, container) => this.event(type, reason, message, container),
      probeResult: (unit, probe, ok) => this.o.onProbe?.(unit, probe, ok),
      podContainers: () =>
        (this.req?.pod?.spec?.containers.length ?? 0) + (this.req?.pod?.spec?.initContainers.length ?? 0) + (this.req?.pod?.spec?.ephemeralContainers.length ?? 0),
      fifos: new FifoPool(join(o.runDir ?? o.stateDir, 'fifo-pool')),
      shims: new ShimPool(o.runc.binary, o.runc.root, o.stateDir),
    };
  }

  private get dirs() {
    const s = this.o.stateDir;
    const r = this.o.runDir ?? s;
    return { req: join(s, 'pod.pb'), units: join(s, 'units'), runUnits: join(r, 'units'), volumes: join(s, 'volumes'), pod: join(r, 'pod'), subPaths: join(r, 'subpaths') };
  }

  private get evictedFile(): string {
    return join(this.o.stateDir, 'evicted');
  }

  // --- UnitDirectory ---
  get(name: string): UnitView | undefined {
    return [...this.units, ...this.initUnits, ...this.ephemeralUnits].find((u) => u.name === name);
  }
  list(): UnitView[] {
    return [...this.initUnits, ...this.units, ...this.ephemeralUnits];
  }
  netnsPath(): string | undefined {
    return this.o.netnsPath;
  }

  logsOf(u: Unit | string): UnitLogs {
    const name = typeof u === 'string' ? u : u.name;
    let l = this.logs.get(name);
    if (!l) {
      l = this.o.logsFor ? this.o.logsFor(name, join(this.dirs.units, name, 'logs')) : { startInstance: () => NULL_SINK, close() {} };
      this.logs.set(name, l);
    }
    return l;
  }

  logsIfAny(name: string): UnitLogs | undefined {
    return this.logs.get(name);
  }

  private changed(): void {
    if (this.changeQueued) return;
    this.changeQueued = true;
    setImmediate(() => {
      this.changeQueued = false;
      this.stopSidecarsOfCompletedPod();
      this.emit('status', this.status());
    });
  }

  event(type: 'Normal' | 'Warning', reason: string, message: string, container = ''): void {
    const e: Event = { time: new Date(), type, reason, message, container };
    this.o.logger.info({ event: reason, container, type }, message);
    this.emit('event', e);
  }

  // --- apply ---
  /** Serialized: one apply or delete at a time. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.sequencer.then(f);
    this.sequencer = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  async apply(req: ApplyPodRequest): Promise<ApplyPodResponse> {
    validateApply(req);
    return this.serial(() => this.doApply(req));
  }

  private async doApply(req: ApplyPodRequest): Promise<ApplyPodResponse> {
    const t0 = performance.now();
    if (req.generation < this.generation) throw new GenerationError(`generation ${req.generation} is older than the applied generation ${this.generation}`);
    const pod = req.pod!;
    const spec = pod.spec!;
    const sameUid = this.req?.pod?.metadata?.uid === pod.metadata?.uid;
    if (this.req && !sameUid) await this.teardown(0);
    // Before anything is recorded: hostPorts that cannot be served refuse the apply.
    await this.syncHostPorts(pod);
    mkdirSync(this.o.stateDir, { recursive: true });
    // Secrets are kept at rest with the state (mode 0600) so that a restarted agent can
    // rebuild volumes; the state dir is the cell's own, like the kubelet's pod dirs.
    writeFileSync(this.dirs.req + '.tmp', ApplyPodRequest.encode(req).finish(), { mode: 0o600 });
    renameSync(this.dirs.req + '.tmp', this.dirs.req);
    this.req = req;
    this.generation = req.generation;
    if (!this.startTime) {
      this.startTime = new Date();
      writeFileSync(join(this.o.stateDir, 'pod-start-time'), this.startTime.toISOString());
    }
    const t1 = performance.now();
    this.podFiles = this.writePodFiles(req);
    const t2 = performance.now();
    const rewritten = await this.prepareVolumes();
    this.pidnsPath = spec.shareProcessNamespace ? await this.sharedPid.ensure() : undefined;
    const t3 = performance.now();
    const changed: string[] = [];
    const diff = (existing: Unit[], wanted: Container[], isInit: boolean, isEphemeral = false): Unit[] => {
      const next: Unit[] = [];
      for (const c of wanted) {
        const hash = hashContainer(c, spec.securityContext);
        const cur = existing.find((u) => u.name === c.name);
        if (cur && cur.hash === hash) {
          // Its env or volumes may read what changed (an annotation, a Secret).
          cur.retryCreate();
          next.push(cur);
          continue;
        }
        // An init unit that already completed is not re-run for the same pod.
        if (cur && isInit && cur.succeeded) {
          next.push(cur);
          continue;
        }
        changed.push(c.name);
        const u = this.newUnit(c, hash, isInit, isEphemeral);
        if (cur) {
          const p = cur.stop(this.graceMs()).then(() => void u.start());
          this.track(p);
          (u as Unit & { after?: Promise<void> }).after = p;
        }
        next.push(u);
      }
      for (const c of wanted) if (!isInit && !isEphemeral) this.removedUnits.delete(c.name);
      for (const u of existing) {
        if (wanted.some((c) => c.name === u.name)) continue;
        if (!isInit && !isEphemeral) this.removedUnits.set(u.name, u);
        this.track(
          u
            .stop(this.graceMs())
            .then(() => this.changed())
            .then(() => removeStagedSubPaths(join(this.dirs.subPaths, u.name), 'unit'))
            .catch((err) => this.o.logger.warn({ err, unit: u.name }, 'cannot remove staged subPaths')),
        );
      }
      return next;
    };
    const oldMain = this.units;
    this.initUnits = diff(this.initUnits, spec.initContainers, true);
    this.units = diff(oldMain, spec.containers, false);
    this.ephemeralUnits = diff(this.ephemeralUnits, spec.ephemeralContainers, false, true);
    // Pull every image at once, while init units run.
    for (const c of [...spec.initContainers, ...spec.containers, ...spec.ephemeralContainers]) void this.images.pull(c).catch(() => {});
    this.scheduleDeadline();
    this.watchEmptyDirLimits();
    void this.runPod();
    this.changed();
    this.o.logger.info(
      { generation: req.generation, changed, volumesWritten: rewritten, applyMs: performance.now() - t0, stateMs: t1 - t0, podFilesMs: t2 - t1, volumesMs: t3 - t2 },
      'pod applied',
    );
    return { generation: req.generation, changedUnits: changed };
  }

  /** activeDeadlineSeconds, counted from the pod's start as the kubelet does. */
  private scheduleDeadline(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    const secs = this.req?.pod?.spec?.activeDeadlineSeconds;
    if (secs === undefined || !this.startTime || this.deadlineExceeded) return;
    const left = this.startTime.getTime() + secs * 1000 - Date.now();
    this.deadlineTimer = setTimeout(
      () => {
        this.deadlineExceeded = true;
        this.event('Normal', 'DeadlineExceeded', 'Pod was active on the node longer than the specified deadline');
        this.initRun++;
        this.track(this.stopUnits(this.graceMs()));
        this.changed();
      },
      Math.max(0, left),
    );
    this.deadlineTimer.unref();
  }

  /** Checks the disk emptyDirs' sizeLimits on a period; over the limit, the pod is evicted. */
  private watchEmptyDirLimits(): void {
    if (this.evictionTimer) clearTimeout(this.evictionTimer);
    this.evictionTimer = undefined;
    const dirs = limitedEmptyDirs(this.req?.pod?.spec?.volumes ?? [], (name) => join(this.dirs.volumes, name));
    if (dirs.length === 0 || this.evicted) return;
    const uid = this.req?.pod?.metadata?.uid;
    const tick = async () => {
      const message = await overLimit(dirs);
      if (this.req?.pod?.metadata?.uid !== uid || this.evicted) return;
      if (!message) {
        this.evictionTimer = setTimeout(() => void tick(), this.o.emptyDirCheckMs ?? 10_000);
        this.evictionTimer.unref();
        return;
      }
      // As the kubelet's eviction manager: no grace period, and the pod fails for good.
      this.evicted = message;
      writeFileSync(this.evictedFile, message);
      this.event('Warning', 'Evicted', message);
      this.initRun++;
      this.track(this.stopUnits(0));
      this.changed();
    };
    this.evictionTimer = setTimeout(() => void tick(), this.o.emptyDirCheckMs ?? 10_000);
    this.evictionTimer.unref();
  }

  private track(p: Promise<void>): void {
    this.stopping.add(p);
    void p.finally(() => this.stopping.delete(p));
  }

  private newUnit(c: Container, hash: string, isInit: boolean, isEphemeral = false): Unit {
    const cg = `${this.o.cgroupParent}/${c.name}`;
    const u = new Unit(c, hash, isInit, join(this.dirs.units, c.name), cg, this.unitCtx, join(this.dirs.runUnits, c.name), isEphemeral);
    u.graceMs = this.graceMs();
    return u;
  }

  graceMs(): number {
    return (this.req?.pod?.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
  }

  /**
   * Init units one after another, each to success (a sidecar: until it has started, and it keeps
   * running); then all units.
   */
  private async runPod(): Promise<void> {
    const run = ++this.initRun;
    // A pod failed for good (evicted, past its deadline) runs nothing again, re-applied or not.
    if (this.evicted || this.deadlineExceeded) return;
    for (const u of this.initUnits) {
      if (run !== this.initRun) return;
      if (u.isSidecar) {
        if (!(u as Unit & { after?: Promise<void> }).after) u.start();
        await waitUntil(this, () => u.hasStarted || u.ended || run !== this.initRun);
        continue;
      }
      if (u.succeeded) continue;
      if (u.ended) return; // failed for good (restartPolicy Never): the pod failed
      const after = (u as Unit & { after?: Promise<void> }).after;
      if (!after) u.start();
      await waitFinished(u, this);
      if (run !== this.initRun) return;
      if (!u.succeeded) return; // failed for good (restartPolicy Never): the pod failed
    }
    if (run !== this.initRun) return;
    for (const u of [...this.units, ...this.ephemeralUnits]) {
      if ((u as Unit & { after?: Promise<void> }).after) continue;
      u.start();
    }
    this.changed();
  }

  /** Builds (or updates in place) every volume; returns the names of those whose files changed. */
  private async prepareVolumes(): Promise<string[]> {
    const req = this.req!;
    const vb = new VolumeBuilder(this.dirs.volumes, req, this.o.podIP, this.o.hostIP);
    mkdirSync(this.dirs.volumes, { recursive: true });
    this.volumes.clear();
    for (const v of req.pod!.spec!.volumes) {
      try {
        this.volumes.set(v.name, await vb.prepare(v));
      } catch (err) {
        const e = err instanceof VolumeError ? err : new VolumeError(v.name, (err as Error).message);
        this.volumes.set(v.name, e);
        this.event('Warning', 'FailedMount', e.message);
      }
    }
    return vb.rewritten;
  }

  // --- OCI spec ---
  private buildUnitSpec(u: Unit, image: ImageInfo, inst: Instance): Promise<Record<string, unknown>> {
    const o = this.o;
    // targetContainerName: the ephemeral container joins that unit's PID namespace (sees and can
    // signal its processes), as the kubelet does with the target's namespace; in a pod that shares
    // one PID namespace every unit is already in it.
    let pidnsPath = this.pidnsPath;
    const target = u.isEphemeral ? u.spec.targetContainerName : '';
    if (target && !pidnsPath) {
      const pid = [...this.units, ...this.initUnits].find((t) => t.name === target)?.pid();
      if (pid === undefined) return Promise.reject(new Error(`target container "${target}" is not running`));
      pidnsPath = `/proc/${pid}/ns/pid`;
    }
    return buildContainerConfig({
      req: this.req!,
      unit: u,
      image,
      inst,
      volumes: this.volumes,
      podFiles: () => this.podFiles!,
      subPathsDir: this.dirs.subPaths,
      podIP: o.podIP,
      hostIP: o.hostIP,
      seccompProfileDir: o.seccompProfileDir,
      netnsPath: o.netnsPath,
      pidnsPath,
    });
  }

  /**
   * The kubelet's order for stopping a pod: every preStop hook at once, the main units (and any
   * init unit) signalled at once, then the sidecars in reverse order, each once the units before
   * it in that order are gone, all within one grace period (a sidecar whose turn comes late
   * still gets 2 s, the kubelet's minimum).
   */
  private async stopUnits(graceMs: number): Promise<void> {
    const main = Promise.all([...this.initUnits.filter((u) => !u.isSidecar), ...this.units, ...this.ephemeralUnits].map((u) => u.stop(graceMs)));
    let turn: Promise<unknown> = main;
    const sidecars = this.initUnits
      .filter((u) => u.isSidecar)
      .reverse()
      .map((u) => (turn = u.stop(graceMs, turn)));
    await Promise.all([main, ...sidecars]);
  }

  /**
   * A pod whose main units have all ended for good (restartPolicy Never or OnFailure) is done:
   * its sidecars are stopped, in reverse order, so that it can complete, as the kubelet does.
   */
  private stopSidecarsOfCompletedPod(): void {
    if (this.sidecarsStopped || this.units.length === 0 || !this.units.every((u) => u.ended)) return;
    const sidecars = this.initUnits.filter((u) => u.isSidecar);
    if (sidecars.length === 0) return;
    this.sidecarsStopped = true;
    // The main units have ended: only the sidecars are left to stop, in the same order.
    this.track(this.stopUnits(this.graceMs()));
  }

  // --- status ---
  status(): GetStatusResponse {
    const req = this.req;
    if (!req) return { status: undefined, generation: 0, podUid: '' };
    const spec = req.pod!.spec!;
    const hasInit = spec.initContainers.length > 0;
    const init = withDefaultWaitingReason(
      this.initUnits.map((u) => u.status()),
      hasInit,
    );
    const main = withDefaultWaitingReason(
      this.units.map((u) => u.status()),
      hasInit,
    );
    const initDone = (u: Unit) => (u.isSidecar ? u.hasStarted : u.succeeded);
    const initialized = this.initUnits.every(initDone);
    let phase = podPhase(spec, init, main, initialized);
    // As the kubelet: running sidecars count towards the pod's readiness.
    const sidecarStatuses = init.filter((s) => this.initUnits.find((u) => u.name === s.name)?.isSidecar);
    const readiness = [...sidecarStatuses, ...main];
    const allReady = main.length > 0 && readiness.every((s) => s.ready);
    const notReady = readiness.filter((s) => !s.ready).map((s) => s.name);
    const conds = [
      this.conditions.set('PodReadyToStartContainers', true),
      this.conditions.set(
        'Initialized',
        initialized,
        initialized ? '' : 'ContainersNotInitialized',
        initialized
          ? ''
          : `containers with incomplete status: [${this.initUnits
              .filter((u) => !initDone(u))
              .map((u) => u.name)
              .join(' ')}]`,
      ),
      this.conditions.set('ContainersReady', allReady, allReady ? '' : 'ContainersNotReady', allReady ? '' : `containers with unready status: [${notReady.join(' ')}]`),
      this.conditions.set('Ready', allReady, allReady ? '' : 'ContainersNotReady', allReady ? '' : `containers with unready status: [${notReady.join(' ')}]`),
      this.conditions.set('PodScheduled', true),
    ];
    let reason = '';
    let message = '';
    if (this.deadlineExceeded) {
      phase = PodPhase.POD_PHASE_FAILED;
      reason = 'DeadlineExceeded';
      message = 'Pod was active on the node longer than the specified deadline';
    }
    if (this.evicted) {
      phase = PodPhase.POD_PHASE_FAILED;
      reason = 'Evicted';
      message = this.evicted;
    }
    if (phase === PodPhase.POD_PHASE_SUCCEEDED || phase === PodPhase.POD_PHASE_FAILED) {
      conds[2] = this.conditions.set('ContainersReady', false, 'PodCompleted');
      conds[3] = this.conditions.set('Ready', false, 'PodCompleted');
    }
    const status: PodStatus = {
      phase,
      conditions: conds,
      message,
      reason,
      podIp: this.o.podIP,
      podIps: [this.o.podIP],
      hostIp: this.o.hostIP,
      startTime: this.startTime,
      initContainerStatuses: init,
      containerStatuses: main,
      observedGeneration: this.generation,
      qosClass: qosClass(spec),
      removedContainerStatuses: [...this.removedUnits.values()].map((u) => u.status()),
      // Left out of the phase and the readiness above, as the kubelet leaves them out.
      ephemeralContainerStatuses: this.ephemeralUnits.map((u) => u.status()),
    };
    return { status, generation: this.generation, podUid: req.pod!.metadata!.uid };
  }

  // --- delete, restore, shutdown ---
  delete(graceSeconds: number | undefined): Promise<void> {
    this.removedUnits.clear();
    return this.serial(() => this.teardown(graceSeconds !== undefined ? graceSeconds * 1000 : this.graceMs()));
  }

  private async teardown(graceMs: number): Promise<void> {
    this.initRun++;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    this.deadlineExceeded = false;
    if (this.evictionTimer) clearTimeout(this.evictionTimer);
    this.evictionTimer = undefined;
    this.evicted = undefined;
    rmSync(this.evictedFile, { force: true });
    const all = [...this.initUnits, ...this.units, ...this.ephemeralUnits];
    await Promise.all([this.stopUnits(graceMs), ...this.stopping]);
    this.sidecarsStopped = false;
    this.sharedPid.remove();
    this.pidnsPath = undefined;
    for (const u of all) await this.o.cgroups.remove(u.cgroup).catch(() => {});
    await this.o.cgroups.remove(this.o.cgroupParent).catch(() => {});
    for (const l of this.logs.values()) l.close();
    this.logs.clear();
    // Staged subPaths first: they are mounts of volume (and hostPath) contents.
    await removeStagedSubPaths(this.dirs.subPaths, 'pod').catch((err) => this.o.logger.warn({ err }, 'cannot remove staged subPaths'));
    await removeVolumes(this.dirs.volumes);
    await rm(this.dirs.units, { recursive: true, force: true });
    await rm(this.dirs.runUnits, { recursive: true, force: true });
    await rm(this.dirs.req, { force: true });
    await rm(join(this.o.stateDir, 'pod-start-time'), { force: true });
    await this.syncHostPorts(undefined).catch((err: Error) => this.o.logger.warn({ err: err.message }, 'cannot remove the hostPort rules'));
    this.initUnits = [];
    this.units = [];
    this.ephemeralUnits = [];
    this.req = undefined;
    this.images.forgetPulls();
    this.startTime = undefined;
    this.event('Normal', 'Deleted', 'pod deleted');
    this.changed();
  }

  /** `announce`: say what the kubelet would warn about (not again when an agent restarts). */
  private writePodFiles(req: ApplyPodRequest, announce = true): PodFiles {
    const { files, warnings } = writePodFiles(this.dirs.pod, req.pod!, this.o.podIP, req.clusterDns);
    if (announce) for (const w of warnings) this.event('Warning', w.reason, w.message);
    return files;
  }

  private async syncHostPorts(pod: Pod | undefined): Promise<void> {
    const mappings = hostPortMappings(pod, this.o.podIP);
    if (!this.o.hostPorts) {
      if (mappings.length > 0)
        throw new InvalidPodError('spec.containers[].ports[].hostPort', 'this cell agent serves no hostPorts (it runs without a pod network namespace it may program)');
      return;
    }
    await this.o.hostPorts.sync(mappings);
  }

  /** After an agent restart: reload the pod and re-adopt units still running. */
  async restore(): Promise<boolean> {
    await this.unitCtx.fifos?.fill().catch((err) => this.o.logger.warn({ err }, 'cannot pre-make FIFOs'));
    this.unitCtx.shims?.prime();
    if (!existsSync(this.dirs.req)) return false;
    const req = ApplyPodRequest.decode(readFileSync(this.dirs.req));
    const spec = req.pod!.spec!;
    this.req = req;
    this.generation = req.generation;
    try {
      this.startTime = new Date(readFileSync(join(this.o.stateDir, 'pod-start-time'), 'utf8').trim());
    } catch {
      this.startTime = new Date();
    }
    this.podFiles = this.writePodFiles(req, false);
    await this.syncHostPorts(req.pod).catch((err: Error) => this.event('Warning', 'HostPortFailed', `cannot serve the pod's hostPorts: ${err.message}`));
    await this.prepareVolumes();
    if (spec.shareProcessNamespace) this.pidnsPath = await this.sharedPid.ensure().catch((err: Error) => (this.event('Warning', 'FailedCreatePodSandBox', err.message), undefined));
    const mk = (c: Container, isInit: boolean, isEphemeral = false) => this.newUnit(c, hashContainer(c, spec.securityContext), isInit, isEphemeral);
    this.initUnits = spec.initContainers.map((c) => mk(c, true));
    this.units = spec.containers.map((c) => mk(c, false));
    this.ephemeralUnits = spec.ephemeralContainers.map((c) => mk(c, false, true));
    const initDone = this.initUnits.every((u) => u.isSidecar || readUnitRecord(u.dir)?.completed);
    // An evicted pod stays failed: nothing of it runs again.
    this.evicted = existsSync(this.evictedFile) ? readFileSync(this.evictedFile, 'utf8') : undefined;
    for (const u of this.evicted ? [] : [...this.initUnits, ...this.units, ...this.ephemeralUnits]) {
      const rec = readUnitRecord(u.dir);
      if (!rec) continue;
      const image = await this.images.cached(u.spec.image).catch(() => undefined);
      if (!u.isInit && !initDone) continue;
      u.start({ record: rec, image });
    }
    this.o.logger.info({ units: existsSync(this.dirs.units) ? readdirSync(this.dirs.units) : [] }, 'restored pod from state dir');
    this.scheduleDeadline();
    this.watchEmptyDirLimits();
    if (!this.evicted) void this.runPod();
    this.changed();
    return true;
  }

  /** Agent shutdown: the units keep running for the next agent to adopt. */
  shutdown(): void {
    this.initRun++;
    this.unitCtx.shims?.close();
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    if (this.evictionTimer) clearTimeout(this.evictionTimer);
    for (const u of [...this.initUnits, ...this.units, ...this.ephemeralUnits]) u.detach();
  }
}

/** Resolves once `done` holds, checked on every status change. */
function waitUntil(pm: EventEmitter, done: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (done()) {
        pm.off('status', check);
        resolve();
      }
    };
    pm.on('status', check);
    check();
  });
}

/** Resolves when a started unit's supervision loop has ended. */
function waitFinished(u: Unit, pm: EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (u.finished || u.succeeded) {
        pm.off('status', check);
        resolve();
      }
    };
    pm.on('status', check);
    check();
  });
}
