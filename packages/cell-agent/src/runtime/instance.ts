// One run of a unit: an overlay rootfs, an OCI bundle, and `runc run` (foreground) inside a
// small detached shell "shim" that records runc's exit status in a file.
//
// Why this shape:
// - Units must outlive the agent (crash, upgrade). So the agent is never the only holder of a
//   unit's stdio: stdout/stderr (and stdin for `stdin: true`) are FIFOs in the instance dir that
//   the shim opens read-write (`1<>fifo`), so the unit never sees SIGPIPE while the agent is
//   away; it blocks once the 64 KiB pipe buffer fills, and carries on when a new agent reopens
//   the FIFOs for reading.
// - The agent is not the parent of the unit after a restart, and Node cannot become a child
//   subreaper, so `runc run -d` would lose the exit status. A foreground `runc run` in a
//   detached `sh` keeps a parent that waits and writes `exit`; the agent learns of the start
//   from runc's `--pid-file` and of the end from the `exit` file (inotify on the instance dir).
// - tty units need runc's console socket (SCM_RIGHTS fd passing), which Node cannot receive.
//   They run the same foreground `runc run` under a node-pty pseudo-terminal held by the agent
//   instead; as a consequence tty units do NOT survive an agent restart (the pty's master goes
//   away with the agent and the unit gets SIGHUP). The restarted agent sees them exited.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import type { IPty } from 'node-pty';
import { EventEmitter } from 'node:events';
import { chmodSync, closeSync, constants as FS, existsSync, mkdirSync, openSync, readFileSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { PassThrough, type Readable, Writable } from 'node:stream';
import type pino from 'pino';
import type { LogSink, StdStream } from '../units/unit-view.js';
import type { Runc } from './runc.js';
import type { FifoPool } from './fifo-pool.js';
import type { ShimPool } from './shim-pool.js';

const SHIM = `
d="$5"
if [ "$6" = 1 ]; then in="$d/stdin"; else in=/dev/null; fi
if [ "$7" = 1 ]; then
  "$1" --root "$2" --log "$d/runc.log" --log-format json run --bundle "$3" --pid-file "$d/pid" "$4"
else
  "$1" --root "$2" --log "$d/runc.log" --log-format json run --bundle "$3" --pid-file "$d/pid" "$4" 0<>"$in" 1<>"$d/stdout" 2<>"$d/stderr"
fi
echo $? > "$d/exit.tmp"
mv "$d/exit.tmp" "$d/exit"
`;

export interface InstanceMeta {
  id: string;
  instance: number;
  shimPid: number;
  tty: boolean;
  stdin: boolean;
  createdAt: string;
}

export interface ExitInfo {
  exitCode: number;
  /** runc failed before the unit's process ran (bad command, bad mount, ...). */
  startError?: string;
  finishedAt: Date;
}

export interface InstanceOptions {
  /** Control files: bundle config, FIFOs, pid, exit, runc log (a tmpfs, see runDir). */
  dir: string;
  /** The unit's writable layer (upper, work) and rootfs mount point: on the cell's disk. */
  dataDir?: string;
  id: string;
  instance: number;
  runc: Runc;
  tty: boolean;
  stdin: boolean;
  /** Close the unit's stdin after the first attach that ends it (Kubernetes' stdinOnce). */
  stdinOnce?: boolean;
  sink: LogSink;
  logger: pino.Logger;
  fifos?: FifoPool;
  shims?: ShimPool;
}

function mkfifo(paths: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile('mkfifo', ['-m', '0600', ...paths], (err, _o, stderr) => (err ? reject(new Error(`mkfifo: ${String(stderr) || err.message}`)) : resolve())),
  );
}

/** Keeps the last bytes a unit wrote, for FallbackToLogsOnError termination messages. */
export class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max = 16 * 1024) {}
  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    while (this.size - this.chunks[0]!.length >= this.max) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

export class Instance extends EventEmitter {
  readonly dir: string;
  readonly id: string;
  readonly instance: number;
  readonly tty: boolean;
  readonly hasStdin: boolean;
  pid: number | undefined;
  startedAt: Date | undefined;
  exit: ExitInfo | undefined;
  readonly tail = new TailBuffer();
  private shim: ChildProcess | undefined;
  private shimPid = 0;
  private watcher: FSWatcher | undefined;
  private poll: NodeJS.Timeout | undefined;
  private readers: Socket[] = [];
  private keepers: number[] = [];
  private openStreams = 0;
  private stdinFd: number | undefined;
  private stdinStream: Writable | undefined;
  private taps = new Set<PassThrough>();
  private pty: IPty | undefined;
  private sinkEnded = false;
  private exitSeen = false;
  private reported = false;
  private spawnedAt: number | undefined;
  private overlay: string[] | undefined;

  constructor(private readonly o: InstanceOptions) {
    super();
    this.dir = o.dir;
    this.id = o.id;
    this.instance = o.instance;
    this.tty = o.tty;
    this.hasStdin = o.stdin;
  }

  get paths() {
    const d = this.dir;
    const data = this.o.dataDir ?? d;
    return {
      upper: join(data, 'upper'),
      work: join(data, 'work'),
      rootfs: join(data, 'rootfs'),
      config: join(d, 'config.json'),
      meta: join(d, 'meta.json'),
      pid: join(d, 'pid'),
      exit: join(d, 'exit'),
      runcLog: join(d, 'runc.log'),
      termination: join(d, 'termination-log'),
    };
  }

  /**
   * Creates the instance dir (upper, work, rootfs mount point, FIFOs). The overlay itself is
   * mounted by runc, as the spec's first mount (destination "/"), inside the unit's own mount
   * namespace: no `mount` process on the start path, nothing in the host's mount table, and
   * nothing to unmount when the unit ends.
   */
  async prepare(layerDirs: string[]): Promise<void> {
    // Synchronous on purpose: a handful of tiny metadata operations, cheaper done at once than
    // each queued on libuv's thread pool (which a loaded cell makes slow to come back).
    const p = this.paths;
    rmSync(this.dir, { recursive: true, force: true }); // leftovers of an instance a crash interrupted
    if (this.o.dataDir) rmSync(this.o.dataDir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    mkdirSync(p.upper, { recursive: true });
    mkdirSync(p.work);
    mkdirSync(p.rootfs);
    writeFileSync(p.termination, '');
    // Any user the unit runs as may write its termination message (umask would narrow it).
    chmodSync(p.termination, 0o666);
    // overlayfs wants the topmost lower dir first; image-puller hands them bottom first.
    this.overlay = [`lowerdir=${[...layerDirs].reverse().join(':')}`, `upperdir=${p.upper}`, `workdir=${p.work}`];
    const fifos = this.tty ? [] : ['stdout', 'stderr', ...(this.hasStdin ? ['stdin'] : [])].map((n) => join(this.dir, n));
    if (fifos.length > 0) await (this.o.fifos ? this.o.fifos.take(fifos) : mkfifo(fifos));
  }

  /** The OCI mount that makes the unit's root filesystem (see prepare). */
  rootMount(): { destination: string; type: string; source: string; options: string[] } {
    if (!this.overlay) throw new Error('instance not prepared');
    return { destination: '/', type: 'overlay', source: 'overlay', options: this.overlay };
  }

  async writeSpec(spec: Record<string, unknown>): Promise<void> {
    writeFileSync(this.paths.config, JSON.stringify(spec));
  }

  /** Starts the shim. Resolves once it is spawned; 'started' and 'exited' follow. */
  async start(): Promise<void> {
    const p = this.paths;
    const args = ['-c', SHIM, 'cello-shim', this.o.runc.binary, this.o.runc.root, this.dir, this.id, this.dir, this.hasStdin ? '1' : '0', this.tty ? '1' : '0'];
    this.watchDir();
    if (this.tty) {
      const pty = await import('node-pty');
      this.pty = pty.spawn('/bin/sh', args, { name: 'xterm', cols: 80, rows: 24, cwd: this.dir, env: process.env as Record<string, string> });
      this.shimPid = this.pty.pid;
      this.openStreams = 1;
      this.pty.onData((d) => this.onOutput('stdout', Buffer.from(d, 'utf8')));
      this.pty.onExit(() => {
        this.onStreamEnd();
        this.checkFiles();
      });
    } else {
      this.openReaders();
      // Until the shim holds the FIFOs, our own write ends keep the readers from seeing EOF.
      for (const n of ['stdout', 'stderr']) this.keepers.push(openSync(join(this.dir, n), FS.O_WRONLY | FS.O_NONBLOCK));
      if (this.hasStdin) this.openStdin();
      this.spawnedAt = performance.now();
      this.shim = this.o.shims
        ? this.o.shims.start(this.dir, this.id, !this.hasStdin ? 0 : this.o.stdinOnce ? 2 : 1)
        : spawn('/bin/sh', args, { detached: true, stdio: 'ignore', cwd: this.dir });
      this.shimPid = this.shim.pid ?? 0;
      this.shim.on('exit', () => this.checkFiles());
      this.shim.on('error', (err) => this.o.logger.error({ err, unit: this.id }, 'shim failed to spawn'));
    }
    const meta: InstanceMeta = { id: this.id, instance: this.instance, shimPid: this.shimPid, tty: this.tty, stdin: this.hasStdin, createdAt: new Date().toISOString() };
    writeFileSync(p.meta, JSON.stringify(meta));
    this.checkFiles();
  }

  /** Reconnects to an instance a previous agent started. */
  async adopt(meta: InstanceMeta): Promise<void> {
    this.shimPid = meta.shimPid;
    this.watchDir();
    if (!this.tty && !existsSync(this.paths.exit)) {
      this.openReaders();
      if (this.hasStdin) this.openStdin();
    }
    // Without a child to wait for, a shim that dies without writing `exit` (killed) is only
    // noticed by checking it is still there.
    this.poll = setInterval(() => {
      try {
        process.kill(this.shimPid, 0);
      } catch {
        this.checkFiles(true);
      }
    }, 2000);
    this.poll.unref();
    this.checkFiles();
  }

  private openReaders(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      const fd = openSync(join(this.dir, stream), FS.O_RDONLY | FS.O_NONBLOCK);
      const sock = new Socket({ fd, readable: true, writable: false });
      this.openStreams++;
      sock.on('data', (b: Buffer) => this.onOutput(stream, b));
      sock.on('error', (err) => this.o.logger.warn({ err, unit: this.id, stream }, 'reading unit output failed'));
      sock.on('close', () => this.onStreamEnd());
      this.readers.push(sock);
    }
  }

  private openStdin(): void {
    // O_RDWR never blocks on a FIFO and never fails for want of a reader.
    this.stdinFd = openSync(join(this.dir, 'stdin'), FS.O_RDWR | FS.O_NONBLOCK);
    this.stdinStream = new Socket({ fd: this.stdinFd, readable: false, writable: true });
    this.stdinStream.on('error', () => {});
  }

  private onOutput(stream: StdStream, b: Buffer): void {
    this.tail.push(b);
    this.o.sink.write(stream, b);
    for (const t of this.taps) if (!t.write(b)) t.emit('lagging');
  }

  private onStreamEnd(): void {
    if (--this.openStreams > 0 || this.sinkEnded) return;
    this.sinkEnded = true;
    this.o.sink.end();
    for (const t of this.taps) t.end();
    this.taps.clear();
    this.emit('output-closed');
    this.maybeExited();
  }

  private watchDir(): void {
    try {
      this.watcher = watch(this.dir, () => this.checkFiles());
      this.watcher.on('error', () => {});
    } catch (err) {
      this.o.logger.warn({ err }, 'cannot watch instance dir');
    }
  }

  private checkFiles(shimGone = false): void {
    const p = this.paths;
    if (this.pid === undefined && existsSync(p.pid)) {
      const pid = Number(readFileSync(p.pid, 'utf8').trim());
      if (pid > 0) {
        this.pid = pid;
        this.startedAt = new Date();
        if (this.spawnedAt !== undefined) this.o.logger.debug({ unit: this.id, runcMs: performance.now() - this.spawnedAt }, 'instance started');
        this.closeKeepers();
        this.emit('started', pid);
      }
    }
    if (this.exitSeen) return;
    if (existsSync(p.exit) || shimGone) {
      this.exitSeen = true;
      this.closeKeepers();
      if (this.poll) clearInterval(this.poll);
      let code = 255;
      try {
        code = Number(readFileSync(p.exit, 'utf8').trim());
      } catch {
        /* shim killed: unknown status */
      }
      void this.finish(code);
    }
  }

  private closeKeepers(): void {
    for (const fd of this.keepers.splice(0)) closeSync(fd);
  }

  private async finish(code: number): Promise<void> {
    let startError: string | undefined;
    if (this.pid === undefined) startError = (await this.runcError()) ?? `runc exited with status ${code} before the process started`;
    this.exit = { exitCode: code, finishedAt: new Date(), ...(startError !== undefined ? { startError } : {}) };
    this.maybeExited();
  }

  /** Exited is reported once both the status is known and the output is drained. */
  private maybeExited(): void {
    if (!this.exit || (!this.sinkEnded && this.openStreams > 0)) return;
    if (this.reported) return;
    this.reported = true;
    this.watcher?.close();
    this.emit('exited', this.exit);
  }

  private async runcError(): Promise<string | undefined> {
    try {
      const lines = (await readFile(this.paths.runcLog, 'utf8')).split('\n').filter(Boolean);
      for (let i = lines.length - 1; i >= 0; i--) {
        const e = JSON.parse(lines[i]!) as { level?: string; msg?: string };
        if (e.level === 'error' && e.msg) return e.msg;
      }
    } catch {
      /* no log */
    }
    return undefined;
  }

  /** Output from now on, for Attach. */
  tap(): Readable {
    const t = new PassThrough({ highWaterMark: 1 << 20 });
    if (this.sinkEnded) t.end();
    else {
      this.taps.add(t);
      t.on('close', () => this.taps.delete(t));
    }
    return t;
  }

  /**
   * A writer into the unit's stdin for one attach session. Ending it ends the unit's stdin
   * only for stdinOnce units; otherwise the next session can write on.
   */
  stdinWritable(): Writable | undefined {
    if (this.pty) {
      const pty = this.pty;
      return new Writable({
        write: (b: Buffer, _e, cb) => {
          pty.write(b.toString('utf8'));
          cb();
        },
      });
    }
    const target = this.stdinStream;
    if (!target || target.destroyed) return undefined;
    return new Writable({
      write: (b: Buffer, _e, cb) => {
        if (target.destroyed) return cb();
        if (target.write(b)) cb();
        else target.once('drain', () => cb());
      },
      final: (cb) => {
        if (this.o.stdinOnce) target.end();
        cb();
      },
    });
  }

  resize(cols: number, rows: number): void {
    this.pty?.resize(cols, rows);
  }

  async kill(signal: string, all = false): Promise<void> {
    await this.o.runc.kill(this.id, signal, all);
  }

  /** Whether the instance's output and status are both final. */
  get done(): boolean {
    return this.reported;
  }

  /** Stops watching; drops the FIFO readers (not the unit). For agent shutdown. */
  detach(): void {
    this.watcher?.close();
    if (this.poll) clearInterval(this.poll);
    for (const r of this.readers) r.destroy();
    this.closeKeepers();
    if (this.stdinStream) this.stdinStream.destroy();
  }

  /** Removes everything of a finished instance. */
  async cleanup(): Promise<void> {
    this.detach();
    await this.o.runc.delete(this.id);
    await rm(this.dir, { recursive: true, force: true });
    if (this.o.dataDir) await rm(this.o.dataDir, { recursive: true, force: true });
  }
}
