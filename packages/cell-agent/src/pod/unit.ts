// Supervises one unit (container) of the pod: instance creation, start, exit, restart with
// back-off, and stop. Its lifecycle is the explicit UnitState machine (unit-state.ts); the image
// comes from the image manager, the OCI spec from container-config.ts, probes are run by the
// probe manager and the record a restarted agent reads is kept by unit-record.ts.
import { abortableSleep } from './backoff.js';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type pino from 'pino';
import type { Container, ContainerState, ContainerStatus } from '@cello/proto/cell';
import { ContainerRestartPolicy, RestartPolicy, TerminationMessagePolicy } from '@cello/proto/cell';
import type { CgroupDriver, UnitLimits } from '../cgroups/driver.js';
import type { ImageInfo } from '../images/image-service.js';
import { type ExitInfo, Instance, type InstanceMeta } from '../runtime/instance.js';
import type { Runc } from '../runtime/runc.js';
import type { FifoPool } from '../runtime/fifo-pool.js';
import type { ShimPool } from '../runtime/shim-pool.js';
import type { LogSink, RuncTarget, UnitStdio, UnitView } from '../units/unit-view.js';
import { Backoff, type BackoffPolicy } from './backoff.js';
import { ProbeManager } from './probe-manager.js';
import { type ProbeTarget, runHandler } from './probes.js';
import { fallbackMessage, messageLimit, readMessageFile } from './termination-message.js';
import { checkTransition, type UnitState } from './unit-state.js';
import { signalName, signalNumberOfExitCode } from '../runtime/exit-signal.js';
import { terminatedFromJson, terminatedToJson, type UnitRecord, writeUnitRecord } from './unit-record.js';
import { CelloError } from '@cello/proto';

export interface UnitContext {
  logger: pino.Logger;
  runc: Runc;
  cgroups: CgroupDriver;
  backoff: BackoffPolicy;
  probeSecondMs: number;
  pidsLimit: number | undefined;
  restartPolicy(): RestartPolicy;
  podIP(): string;
  /** Pulls (per policy) with retries; shows ErrImagePull/ImagePullBackOff on the unit meanwhile. */
  ensureImage(unit: Unit, signal: AbortSignal): Promise<ImageInfo | undefined>;
  /** Writes the OCI spec for this instance; throws ConfigError for a bad configuration. */
  buildSpec(unit: Unit, image: ImageInfo, inst: Instance): Promise<Record<string, unknown>>;
  /** A log sink for a new instance of the unit. */
  newSink(unit: Unit): LogSink;
  changed(): void;
  event(type: 'Normal' | 'Warning', reason: string, message: string, container: string): void;
  fifos?: FifoPool;
  shims?: ShimPool;
  probeResult?(unit: string, probe: 'startup' | 'liveness' | 'readiness', ok: boolean): void;
  /** Containers in the pod (init units included): they share the pod's termination-message budget. */
  podContainers?(): number;
}

/** A configuration problem detected before runc runs: shown as CreateContainerConfigError. */
/** A container spec the agent cannot run as given. */
export class ConfigError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

export class Unit implements UnitView {
  readonly name: string;
  /** A native sidecar: an init unit with restartPolicy Always, kept running beside the main units. */
  readonly isSidecar: boolean;
  /** Sticky: the unit has been started once (running, startup probe passed): what lets the next init unit go. */
  hasStarted = false;
  readonly stdin: boolean;
  readonly tty: boolean;
  // Changed only through transition(), so the state machine in unit-state.ts holds.
  private current: UnitState = { kind: 'waiting', reason: 'ContainerCreating', message: '' };
  restarts = 0;
  lastState: UnitState | undefined;
  ready = false;
  started: boolean | undefined;
  image: ImageInfo | undefined;
  instance: Instance | undefined;
  private instanceCounter = 0;
  private readonly backoff: Backoff;
  private abort = new AbortController();
  /** Ends the wait before the next creation attempt early: the pod was updated (retryCreate). */
  private createRetry = new AbortController();
  private loop: Promise<void> | undefined;
  private stopRequested = false;
  private readonly probes: ProbeManager;
  private killReason: string | undefined;
  private readonly oomBefore = new WeakMap<Instance, { ooms: number; hits: number }>();
  private readonly killedByAgent = new WeakSet<Instance>();
  private completed = false;
  private terminal: UnitState | undefined;

  constructor(
    readonly spec: Container,
    readonly hash: string,
    readonly isInit: boolean,
    readonly dir: string,
    readonly cgroup: string,
    private readonly ctx: UnitContext,
    /** Where the unit's instances keep their control files (tmpfs); defaults to `dir`. */
    readonly runDir: string = dir,
    /** An ephemeral container (kubectl debug): never restarted, whatever the pod's restartPolicy. */
    readonly isEphemeral = false,
  ) {
    this.name = spec.name;
    this.isSidecar = isInit && spec.restartPolicy === ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS;
    this.stdin = spec.stdin;
    this.tty = spec.tty;
    this.backoff = new Backoff(ctx.backoff);
    this.probes = new ProbeManager(spec, ctx.probeSecondMs);
    this.started = spec.startupProbe ? false : undefined;
  }

  // --- UnitView ---
  running(): boolean {
    return this.state.kind === 'running' || this.state.kind === 'stopping';
  }
  runc(): RuncTarget | undefined {
    return this.running() && this.instance ? { root: this.ctx.runc.root, id: this.instance.id, config: this.instance.paths.config } : undefined;
  }
  pid(): number | undefined {
    return this.running() ? this.instance?.pid : undefined;
  }
  cgroupPath(): string {
    return this.cgroup;
  }
  restartCount(): number {
    return this.restarts;
  }
  startedAt(): Date | undefined {
    return this.state.kind === 'running' ? this.state.startedAt : undefined;
  }
  memoryLimitBytes(): number | undefined {
    return this.spec.resources?.limits?.memoryBytes;
  }
  attach(): UnitStdio | undefined {
    const inst = this.instance;
    if (!this.running() || !inst) return undefined;
    return {
      stdin: this.stdin ? inst.stdinWritable() : undefined,
      output: inst.tap(),
      resize: (c, r) => inst.resize(c, r),
      exited: () =>
        new Promise<number>((resolve) => {
          if (inst.exit !== undefined && inst.done) return resolve(inst.exit.exitCode);
          inst.once('exited', (e: { exitCode: number }) => resolve(e.exitCode));
        }),
    };
  }

  /** True once an init unit has completed successfully (it is never run again). */
  get succeeded(): boolean {
    return this.completed;
  }

  get finished(): boolean {
    return this.state.kind === 'exited' && this.loop === undefined;
  }

  /** Ended for good: restartPolicy says it is not run again. */
  get ended(): boolean {
    return this.terminal !== undefined;
  }

  get state(): UnitState {
    return this.current;
  }

  /** The one place the state changes: an illegal transition throws IllegalTransition. */
  private transition(s: UnitState): void {
    checkTransition(this.current, s);
    this.current = s;
  }

  private setState(s: UnitState): void {
    this.transition(s);
    void this.persist();
    this.ctx.changed();
  }

  /** Shows an image problem while the unit waits for it. */
  showWaiting(reason: string, message: string): void {
    if (this.state.kind === 'waiting' || this.state.kind === 'exited') this.setState({ kind: 'waiting', reason, message });
  }

  limits(): UnitLimits {
    const r = this.spec.resources;
    return {
      memoryBytes: r?.limits?.memoryBytes,
      cpuMillis: r?.limits?.cpuMillis,
      cpuRequestMillis: r?.requests?.cpuMillis ?? r?.limits?.cpuMillis,
      pids: this.ctx.pidsLimit,
    };
  }

  // --- persistence, so a restarted agent knows restart counts and the current instance ---
  private async persist(): Promise<void> {
    const rec: UnitRecord = {
      hash: this.hash,
      restartCount: this.restarts,
      instanceCounter: this.instanceCounter,
      completed: this.completed,
      ...(this.terminal?.kind === 'exited' ? { terminal: terminatedToJson(this.terminal) } : {}),
      ...(this.lastState?.kind === 'exited' ? { lastState: terminatedToJson(this.lastState) } : {}),
      ...(this.instance && this.image
        ? {
            current: {
              instance: this.instance.instance,
              imageDigest: this.image.digest,
              stopSignal: this.stopSignal(),
              ...(this.instance.startedAt ? { startedAt: this.instance.startedAt.toISOString() } : {}),
            },
          }
        : {}),
    };
    try {
      writeUnitRecord(this.dir, rec);
    } catch (err) {
      this.ctx.logger.warn({ err, unit: this.name }, 'cannot persist unit record');
    }
  }

  // --- lifecycle ---
  /** Starts supervising; with `adopt`, reconnects to the instance a previous agent left. */
  start(adopt?: { record: UnitRecord; image: ImageInfo | undefined }): void {
    if (this.loop || this.terminal) return;
    this.stopRequested = false;
    this.abort = new AbortController();
    let adopted: Instance | undefined;
    if (adopt) {
      const r = adopt.record;
      this.restarts = r.restartCount;
      this.instanceCounter = r.instanceCounter;
      this.completed = r.completed ?? false;
      if (r.lastState) this.lastState = terminatedFromJson(r.lastState);
      this.image = adopt.image;
      if (r.current) adopted = this.adoptInstance(r.current.instance);
      if (r.terminal && !adopted) {
        // Restored, not new: the record already holds it, so no persist.
        this.transition(terminatedFromJson(r.terminal));
        this.terminal = this.state;
        return;
      }
    }
    this.loop = this.run(adopted).finally(() => {
      this.loop = undefined;
      this.ctx.changed();
    });
  }

  private adoptInstance(n: number): Instance | undefined {
    const dir = join(this.runDir, `i${n}`);
    let meta: InstanceMeta;
    try {
      meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as InstanceMeta;
    } catch {
      return undefined;
    }
    const inst = new Instance({
      dir,
      dataDir: join(this.dir, `i${n}`),
      id: meta.id,
      instance: n,
      runc: this.ctx.runc,
      tty: meta.tty,
      stdin: meta.stdin,
      stdinOnce: this.spec.stdinOnce,
      sink: this.ctx.newSink(this),
      logger: this.ctx.logger,
    });
    this.instance = inst;
    return inst;
  }

  private async run(adopted: Instance | undefined): Promise<void> {
    let inst = adopted;
    while (!this.stopRequested) {
      if (!inst) {
        inst = await this.create();
        if (!inst) {
          if (this.stopRequested) break;
          continue;
        }
        if (this.stopRequested) {
          // Stopped while the instance was being created: it never runs.
          await inst.cleanup().catch(() => {});
          this.instance = undefined;
          break;
        }
      } else {
        // Adopted: the previous agent started it.
        const exitedP = once(inst, 'exited') as Promise<[ExitInfo]>;
        const startedP = once(inst, 'started');
        await inst.adopt(JSON.parse(readFileSync(join(inst.dir, 'meta.json'), 'utf8')) as InstanceMeta);
        if (inst.pid !== undefined) {
          // The previous agent took it through starting; replay that edge rather than allow waiting -> running.
          const startedAt = readStartedAt(inst) ?? inst.startedAt ?? new Date();
          this.transition({ kind: 'starting', since: startedAt });
          this.transition({ kind: 'running', startedAt });
          this.startProbes(inst);
          this.ctx.changed();
        } else {
          void startedP.then(() => this.onStarted(inst!)).catch(() => {});
        }
        const [exit] = await exitedP;
        const restart = await this.onExited(inst, exit);
        inst = undefined;
        if (!restart) break;
        continue;
      }
      const exitedP = once(inst, 'exited') as Promise<[ExitInfo]>;
      const current = inst;
      inst.once('started', () => this.onStarted(current));
      this.oomBefore.set(inst, { ooms: await this.ctx.cgroups.oomKills(this.cgroup), hits: await this.ctx.cgroups.limitHits(this.cgroup) });
      try {
        await inst.start();
      } catch (err) {
        this.ctx.logger.error({ err, unit: this.name }, 'starting the shim failed');
      }
      await this.persist();
      const [exit] = await exitedP;
      const restart = await this.onExited(inst, exit);
      inst = undefined;
      if (!restart) break;
    }
  }

  /** Creates the next instance (image, rootfs, spec). Undefined: retry (after back-off) or stop. */
  private async create(): Promise<Instance | undefined> {
    const t0 = performance.now();
    const image = await this.ctx.ensureImage(this, this.abort.signal);
    const tImage = performance.now();
    if (!image || this.stopRequested) return undefined;
    this.image = image;
    const n = ++this.instanceCounter;
    const inst = new Instance({
      dir: join(this.runDir, `i${n}`),
      dataDir: join(this.dir, `i${n}`),
      // Unique across unit replacements (a spec change starts a new Unit with its own counter).
      id: `${this.name}-${n}-${randomBytes(3).toString('hex')}`,
      instance: n,
      runc: this.ctx.runc,
      tty: this.tty,
      stdin: this.stdin,
      stdinOnce: this.spec.stdinOnce,
      sink: this.ctx.newSink(this),
      logger: this.ctx.logger,
      ...(this.ctx.fifos ? { fifos: this.ctx.fifos } : {}),
      ...(this.ctx.shims ? { shims: this.ctx.shims } : {}),
    });
    try {
      this.setState({ kind: 'starting', since: new Date() });
      // Independent steps of instance creation, overlapped.
      await Promise.all([this.ctx.cgroups.ensure(this.cgroup, this.limits()), inst.prepare(image.layerDirs)]);
      const tPrepared = performance.now();
      await inst.writeSpec(await this.ctx.buildSpec(this, image, inst));
      this.ctx.logger.debug({ unit: this.name, imageMs: tImage - t0, prepareMs: tPrepared - tImage, specMs: performance.now() - tPrepared }, 'instance created');
      this.instance = inst;
      this.ctx.event('Normal', 'Created', `Created container ${this.name}`, this.name);
      return inst;
    } catch (err) {
      await inst.cleanup().catch(() => {});
      const reason = err instanceof ConfigError ? 'CreateContainerConfigError' : 'CreateContainerError';
      const msg = (err as Error).message;
      this.ctx.logger.warn({ unit: this.name, err: msg }, 'cannot create unit instance');
      this.ctx.event('Warning', 'Failed', `Error: ${msg}`, this.name);
      this.setState({ kind: 'waiting', reason, message: msg });
      // As the kubelet: a configuration error (a missing key, a subPathExpr that expands to an
      // absolute path, ...) is no crash and gets no crash-loop back-off; the pod is tried again
      // at the pod worker's period, and at once when the pod is updated (which may fix it).
      const delay = err instanceof ConfigError ? this.ctx.backoff.baseMs : Math.max(this.backoff.next(0), this.ctx.backoff.baseMs);
      this.createRetry = new AbortController();
      await abortableSleep(delay, AbortSignal.any([this.abort.signal, this.createRetry.signal]));
      return undefined;
    }
  }

  private probeTarget(inst: Instance): ProbeTarget {
    return { runcBinary: this.ctx.runc.binary, runcRoot: this.ctx.runc.root, containerId: inst.id, podIP: this.ctx.podIP(), container: this.spec };
  }

  private onStarted(inst: Instance): void {
    if (this.state.kind !== 'starting' || this.instance !== inst) return;
    const hook = this.spec.lifecycle?.postStart;
    if (!hook) return this.markRunning(inst);
    // As in the kubelet, the unit is not Running until its postStart hook returned; a failed
    // hook kills the instance, which then restarts per policy.
    void runHandler(hook, this.probeTarget(inst), this.graceMs).then((r) => {
      if (this.instance !== inst || this.state.kind !== 'starting') return;
      if (r.ok) return this.markRunning(inst);
      this.ctx.event('Warning', 'FailedPostStartHook', `PostStartHook failed: ${r.message}`, this.name);
      this.killReason = 'postStart';
      void this.killInstance(inst, 0);
    });
  }

  private markRunning(inst: Instance): void {
    this.setState({ kind: 'running', startedAt: inst.startedAt ?? new Date() });
    // The next unit's shim, now that this one's start is reported.
    setTimeout(() => this.ctx.shims?.prime(), 50).unref();
    this.ctx.event('Normal', 'Started', `Started container ${this.name}`, this.name);
    this.startProbes(inst);
  }

  private startProbes(inst: Instance): void {
    this.started = !this.spec.startupProbe;
    if (this.started) this.hasStarted = true;
    this.probes.start(this.probeTarget(inst), {
      startup: (ok, msg) => {
        if (ok) {
          this.started = true;
          this.hasStarted = true;
          this.ctx.changed();
        } else void this.livenessFailed(inst, `Startup probe failed: ${msg}`);
      },
      liveness: (ok, msg) => {
        if (!ok) void this.livenessFailed(inst, msg);
      },
      readiness: (ok, msg) => {
        if (this.instance !== inst || !this.running()) return;
        if (!ok) this.ctx.event('Warning', 'Unhealthy', `Readiness probe failed: ${msg}`, this.name);
        if (this.ready !== ok) {
          this.ready = ok;
          this.ctx.changed();
        }
      },
      noReadinessProbe: () => {
        if (this.isInit && !this.isSidecar) return;
        this.ready = true;
        this.ctx.changed();
      },
      each: (kind, ok) => this.ctx.probeResult?.(this.name, kind, ok),
    });
  }

  private stopProbes(): void {
    this.probes.stop();
  }

  private async livenessFailed(inst: Instance, msg: string): Promise<void> {
    if (this.instance !== inst || this.state.kind !== 'running') return;
    this.ctx.event('Warning', 'Unhealthy', msg.startsWith('Startup') ? msg : `Liveness probe failed: ${msg}`, this.name);
    this.ctx.event('Normal', 'Killing', `Container ${this.name} failed liveness probe, will be restarted`, this.name);
    this.killReason = 'liveness';
    const grace = this.spec.livenessProbe?.terminationGracePeriodSeconds;
    await this.killInstance(inst, grace !== undefined ? grace * 1000 : undefined);
  }

  /** As the kubelet: the container's lifecycle.stopSignal, else the image's StopSignal, else SIGTERM. */
  stopSignal(): string {
    return this.spec.lifecycle?.stopSignal || this.image?.config.stopSignal || 'SIGTERM';
  }

  /**
   * The stop signal, then SIGKILL to everything in the unit after grace. `turn`: a sidecar's
   * signal waits for it (the main units and later sidecars gone), within the grace period, as
   * the kubelet's termination ordering; its preStop hook runs at once.
   */
  private async killInstance(inst: Instance, graceMs: number | undefined, turn?: Promise<unknown>): Promise<void> {
    const g = graceMs ?? this.graceMs;
    this.stopProbes();
    if (this.state.kind === 'running' || this.state.kind === 'starting') {
      this.setState({ kind: 'stopping', startedAt: this.state.kind === 'running' ? this.state.startedAt : undefined, since: new Date(), reason: this.killReason ?? 'stop' });
    }
    if (inst.done) return;
    const exited = once(inst, 'exited');
    const sig = this.stopSignal();
    this.killedByAgent.add(inst);
    let left = g;
    const t0 = Date.now();
    const preStop = this.spec.lifecycle?.preStop;
    if (preStop && g > 0 && inst.pid !== undefined) {
      // preStop runs first, inside the grace period; the stop signal follows it (with at
      // least 2 s left, as the kubelet grants).
      const r = await Promise.race([runHandler(preStop, this.probeTarget(inst), g), exited.then(() => ({ ok: true, message: '' }))]);
      if (!r.ok) this.ctx.event('Warning', 'FailedPreStopHook', `PreStopHook failed: ${r.message}`, this.name);
      left = Math.max(g - (Date.now() - t0), 2000);
    }
    if (turn && g > 0 && !inst.done) {
      await Promise.race([turn, exited, new Promise((r) => setTimeout(r, Math.max(g - (Date.now() - t0), 0)).unref())]);
      left = Math.max(g - (Date.now() - t0), 2000);
    }
    if (inst.done) return;
    if (left > 0 && inst.pid !== undefined) await inst.kill(sig).catch(() => {});
    const timer = new Promise<'timeout'>((r) => {
      const t = setTimeout(() => r('timeout'), left);
      void exited.then(() => clearTimeout(t));
    });
    if ((await Promise.race([exited.then(() => 'exited' as const), timer])) === 'timeout') {
      this.ctx.logger.info({ unit: this.name }, 'grace period over, killing');
      // Repeated until the instance is gone: runc may still be creating it (and so refuse the
      // kill) when the stop comes early.
      let gone = false;
      void exited.then(() => (gone = true));
      while (!gone) {
        await inst.kill('SIGKILL', true).catch(() => {});
        await this.ctx.cgroups.killAll(this.cgroup, 1000).catch((err) => this.ctx.logger.warn({ err: (err as Error).message }, 'cgroup kill failed'));
        await Promise.race([exited, new Promise((r) => setTimeout(r, 500))]);
      }
    }
  }

  graceMs = 30_000;

  private async onExited(inst: Instance, exit: ExitInfo): Promise<boolean> {
    this.stopProbes();
    const ooms = await this.ctx.cgroups.oomKills(this.cgroup);
    const hits = await this.ctx.cgroups.limitHits(this.cgroup);
    const before = this.oomBefore.get(inst) ?? { ooms, hits };
    const killedByUs = this.killedByAgent.has(inst);
    let reason: string;
    let message = '';
    let code = exit.exitCode;
    const signal = signalNumberOfExitCode(code);
    if (exit.startError !== undefined) {
      reason = 'StartError';
      message = exit.startError;
      code = 128;
    } else if (ooms > before.ooms || (code === 137 && !killedByUs && hits > before.hits)) reason = 'OOMKilled';
    else reason = code === 0 ? 'Completed' : 'Error';
    if (exit.startError === undefined) message = this.terminationMessage(inst, code);
    const term: UnitState = {
      kind: 'exited',
      exitCode: code,
      signal,
      reason,
      message,
      startedAt: inst.startedAt ?? (this.state.kind === 'running' ? this.state.startedAt : undefined),
      finishedAt: exit.finishedAt,
      containerId: `runc://${inst.id}`,
    };
    this.ready = false;
    if (this.spec.startupProbe) this.started = false;
    this.setState(term);
    this.ctx.logger.info({ unit: this.name, exitCode: code, reason, signal: signalName(signal) || undefined }, 'unit exited');
    if (reason === 'StartError') this.ctx.event('Warning', 'Failed', `Error: ${message}`, this.name);
    await inst.cleanup().catch((err) => this.ctx.logger.warn({ err }, 'instance cleanup failed'));
    this.instance = undefined;
    this.killReason = undefined;
    if (this.stopRequested) {
      await this.persist();
      return false;
    }
    const policy = this.ctx.restartPolicy();
    const failed = code !== 0;
    let restart: boolean;
    if (this.isSidecar)
      restart = true; // whatever the pod's restartPolicy, as the kubelet
    else if (this.isEphemeral) restart = false;
    else if (this.isInit) {
      if (!failed) this.completed = true;
      restart = failed && policy !== RestartPolicy.RESTART_POLICY_NEVER;
    } else if (policy === RestartPolicy.RESTART_POLICY_NEVER) restart = false;
    else if (policy === RestartPolicy.RESTART_POLICY_ON_FAILURE) restart = failed;
    else restart = true;
    if (!restart) {
      this.terminal = term;
      await this.persist();
      return false;
    }
    const ran = term.startedAt ? term.finishedAt.getTime() - term.startedAt.getTime() : 0;
    const delay = this.backoff.next(ran);
    this.lastState = term;
    this.restarts++;
    if (delay > 0) {
      const msg = `back-off ${Math.round(delay / 1000)}s restarting failed container=${this.name}`;
      this.setState({ kind: 'waiting', reason: 'CrashLoopBackOff', message: msg });
      this.ctx.event('Warning', 'BackOff', `Back-off restarting failed container ${this.name}`, this.name);
      await abortableSleep(delay, this.abort.signal);
    } else {
      this.setState({ kind: 'waiting', reason: 'ContainerCreating', message: '' });
    }
    return !this.stopRequested;
  }

  private terminationMessage(inst: Instance, code: number): string {
    const limit = messageLimit(this.ctx.podContainers?.() ?? 1);
    let msg = readMessageFile(inst.paths.termination, limit);
    if (msg === '' && code !== 0 && this.spec.terminationMessagePolicy === TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FALLBACK_TO_LOGS_ON_ERROR) {
      msg = fallbackMessage(inst.tail.text(), limit);
    }
    return msg;
  }

  /** The pod was updated: a unit waiting to try its creation again tries now. */
  retryCreate(): void {
    if (this.state.kind === 'waiting') this.createRetry.abort();
  }

  /** Stops the unit for good (delete, or a spec change). Resolves when it is gone. */
  async stop(graceMs: number, turn?: Promise<unknown>): Promise<void> {
    this.stopRequested = true;
    this.abort.abort();
    const inst = this.instance;
    if (inst && !inst.done && (this.state.kind === 'running' || this.state.kind === 'starting' || this.state.kind === 'stopping')) {
      this.ctx.event('Normal', 'Killing', `Stopping container ${this.name}`, this.name);
      await this.killInstance(inst, graceMs, turn);
    }
    await this.loop;
    this.stopProbes();
    if (this.state.kind === 'waiting' || this.state.kind === 'starting') {
      // As the kubelet reports a container of a terminated pod that never ran.
      this.setState({
        kind: 'exited',
        exitCode: 137,
        signal: 0,
        reason: 'ContainerStatusUnknown',
        message: 'stopped before it started',
        startedAt: undefined,
        finishedAt: new Date(),
        containerId: '',
      });
    }
  }

  /** Agent shutdown: leave the unit running, stop watching it. */
  detach(): void {
    this.stopRequested = true;
    this.abort.abort();
    this.stopProbes();
    this.instance?.detach();
  }

  status(): ContainerStatus {
    return {
      name: this.name,
      state: toContainerState(this.state),
      lastState: this.lastState ? toContainerState(this.lastState) : undefined,
      ready: this.ready && this.state.kind === 'running',
      restartCount: this.restarts,
      image: this.spec.image,
      imageId: this.image?.digest ?? '',
      containerId: this.instance ? `runc://${this.instance.id}` : this.state.kind === 'exited' ? this.state.containerId : '',
      ...(this.isInit && !this.isSidecar ? {} : { started: this.state.kind === 'running' && this.started !== false }),
    };
  }
}

function readStartedAt(inst: Instance): Date | undefined {
  try {
    const rec = JSON.parse(readFileSync(join(inst.paths.upper, '..', '..', 'unit.json'), 'utf8')) as UnitRecord;
    return rec.current?.startedAt ? new Date(rec.current.startedAt) : undefined;
  } catch {
    return undefined;
  }
}

export function toContainerState(s: UnitState): ContainerState {
  switch (s.kind) {
    case 'waiting':
      return { state: { $case: 'waiting', value: { reason: s.reason, message: s.message } } };
    case 'starting':
      return { state: { $case: 'waiting', value: { reason: 'ContainerCreating', message: '' } } };
    case 'running':
    case 'stopping':
      return { state: { $case: 'running', value: { startedAt: s.startedAt } } };
    case 'exited':
      return {
        state: {
          $case: 'terminated',
          value: {
            exitCode: s.exitCode,
            signal: s.signal,
            reason: s.reason,
            message: s.message,
            startedAt: s.startedAt,
            finishedAt: s.finishedAt,
            containerId: s.containerId,
          },
        },
      };
  }
}
