// TEST HELPER: a tiny UnitDirectory over real runc containers (busybox-static rootfs bundles made
// here with `runc spec`), so the stream services can be tested before and independently of the
// runtime engineer's pod machinery. Not a mock: every unit is a real runc container with its own
// namespaces and cgroup, and its real stdout/stderr feed a real ContainerLogs.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import * as pty from 'node-pty';
import { waitFor } from '@cello/testkit';
import { ContainerLogs } from '../../../src/logs/index.js';
import type { RuncTarget, UnitDirectory, UnitStdio, UnitView } from '../../../src/units/unit-view.js';

function need(cmd: string, pkg: string): void {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${cmd} is missing: apt-get install -y ${pkg} (or npm run setup)`);
  }
}

export interface TestUnitSpec {
  name: string;
  args: string[];
  env?: string[];
  cwd?: string;
  /** uid:gid inside the container */
  user?: { uid: number; gid: number; additionalGids?: number[] };
  stdin?: boolean;
  tty?: boolean;
  memoryLimitBytes?: number;
  /** Files to create in the rootfs before start: path -> content. */
  files?: Record<string, string | Buffer>;
  /** Log rotation settings for this unit's ContainerLogs. */
  logs?: { maxFileBytes?: number; maxFiles?: number; ringBytes?: number };
}

const CGROUP_PARENT = 'cello-streams-test';

export class TestRuncUnit implements UnitView {
  readonly name: string;
  readonly stdin: boolean;
  readonly tty: boolean;
  readonly logs: ContainerLogs;
  readonly bundle: string;
  private proc: ChildProcess | undefined;
  private term: pty.IPty | undefined;
  private started: Date | undefined;
  private restarts = -1;
  private hostPid: number | undefined;
  private isRunning = false;
  private listeners = new Set<PassThrough>();
  private exitWaiters: Array<(code: number) => void> = [];
  /** Resolves with the current (or last) instance's exit code. */
  private instanceExit: Promise<number> = Promise.resolve(-1);
  private seq = 0;
  id: string;

  constructor(
    private readonly dir: RuncTestUnits,
    readonly spec: TestUnitSpec,
  ) {
    this.name = spec.name;
    this.stdin = spec.stdin ?? false;
    this.tty = spec.tty ?? false;
    this.bundle = join(dir.base, `bundle-${spec.name}`);
    this.id = `${dir.prefix}-${spec.name}`;
    this.logs = new ContainerLogs({ dir: join(dir.base, 'logs', spec.name), ...spec.logs });
    this.makeBundle();
  }

  private makeBundle(): void {
    const rootfs = join(this.bundle, 'rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    for (const d of ['proc', 'dev', 'sys', 'tmp', 'etc', 'root', 'www']) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync('/usr/bin/busybox', join(rootfs, 'bin', 'busybox'));
    chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
    const applets = execFileSync('/usr/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const a of applets) if (a !== 'busybox') symlinkSync('busybox', join(rootfs, 'bin', a));
    writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n');
    writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\nuser:x:1000:\nextra:x:2000:\n');
    for (const [p, content] of Object.entries(this.spec.files ?? {})) {
      const full = join(rootfs, p);
      mkdirSync(join(full, '..'), { recursive: true });
      writeFileSync(full, content);
    }
    execFileSync('runc', ['spec'], { cwd: this.bundle });
    const config = JSON.parse(readFileSync(join(this.bundle, 'config.json'), 'utf8'));
    config.process.terminal = this.tty;
    config.process.args = this.spec.args;
    config.process.env = ['PATH=/bin', 'TERM=xterm', ...(this.spec.env ?? [])];
    config.process.cwd = this.spec.cwd ?? '/';
    if (this.spec.user) config.process.user = this.spec.user;
    config.root.readonly = false;
    config.hostname = this.spec.name;
    config.linux.cgroupsPath = this.cgroupPath();
    config.linux.namespaces = config.linux.namespaces.map((ns: { type: string }) => (ns.type === 'network' ? { type: 'network', path: this.dir.netnsPath() } : ns));
    if (this.spec.memoryLimitBytes !== undefined) config.linux.resources = { ...config.linux.resources, memory: { limit: this.spec.memoryLimitBytes } };
    writeFileSync(join(this.bundle, 'config.json'), JSON.stringify(config, null, 2));
  }

  /** Starts (or restarts) the unit and waits until runc reports it running. */
  async start(): Promise<void> {
    if (this.isRunning) throw new Error(`${this.name} is running`);
    this.restarts += 1;
    this.seq += 1;
    this.id = `${this.dir.prefix}-${this.spec.name}-${this.seq}`;
    const sink = this.logs.startInstance();
    const args = ['--root', this.dir.runcRoot, 'run', '--bundle', this.bundle, this.id];
    const onOut = (stream: 'stdout' | 'stderr', chunk: Buffer) => {
      sink.write(stream, chunk);
      for (const l of this.listeners) l.write(chunk);
    };
    let exited: Promise<number>;
    if (this.tty) {
      const t = pty.spawn('runc', args, { cols: 80, rows: 24, encoding: null as unknown as string, env: process.env as Record<string, string> });
      this.term = t;
      t.onData((d) => onOut('stdout', Buffer.isBuffer(d) ? d : Buffer.from(d)));
      exited = new Promise((resolve) => t.onExit(({ exitCode }) => resolve(exitCode)));
    } else {
      const p = spawn('runc', args, { stdio: [this.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
      this.proc = p;
      p.stdout!.on('data', (c: Buffer) => onOut('stdout', c));
      p.stderr!.on('data', (c: Buffer) => onOut('stderr', c));
      exited = new Promise((resolve) => p.on('close', (code, sig) => resolve(code ?? 128 + (sig ? 9 : 0))));
    }
    this.isRunning = true;
    this.started = new Date();
    this.instanceExit = exited;
    void exited.then((code) => {
      this.isRunning = false;
      this.hostPid = undefined;
      sink.end();
      for (const l of this.listeners) l.end();
      this.listeners.clear();
      const ws = this.exitWaiters;
      this.exitWaiters = [];
      for (const w of ws) w(code);
    });
    const id = this.id;
    this.hostPid = await waitFor(
      `runc container ${id} running`,
      () => {
        if (!this.isRunning) throw new Error(`${id} exited during start`);
        try {
          const st = JSON.parse(execFileSync('runc', ['--root', this.dir.runcRoot, 'state', id], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
          return st.status === 'running' ? (st.pid as number) : undefined;
        } catch {
          return undefined;
        }
      },
      { timeoutMs: 15_000, intervalMs: 20 },
    );
  }

  /** Resolves with runc's exit code when the current instance ends. */
  waitExit(): Promise<number> {
    if (!this.isRunning) return Promise.resolve(-1);
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  async stop(): Promise<void> {
    if (!this.isRunning) return;
    const done = this.waitExit();
    try {
      execFileSync('runc', ['--root', this.dir.runcRoot, 'kill', '--all', this.id, 'KILL'], { stdio: 'ignore' });
    } catch {
      /* exited meanwhile */
    }
    await done;
  }

  running(): boolean {
    return this.isRunning && this.hostPid !== undefined;
  }
  runc(): RuncTarget | undefined {
    return this.running() ? { root: this.dir.runcRoot, id: this.id, config: join(this.bundle, 'config.json') } : undefined;
  }
  pid(): number | undefined {
    return this.hostPid;
  }
  cgroupPath(): string {
    return `/${CGROUP_PARENT}/${this.dir.prefix}-${this.spec.name}`;
  }
  restartCount(): number {
    return Math.max(0, this.restarts);
  }
  startedAt(): Date | undefined {
    // Like the pod manager's units: the start of the instance that is running, if one is.
    return this.isRunning ? this.started : undefined;
  }
  memoryLimitBytes(): number | undefined {
    return this.spec.memoryLimitBytes;
  }
  attach(): UnitStdio | undefined {
    if (!this.running()) return undefined;
    const out = new PassThrough();
    this.listeners.add(out);
    out.on('close', () => this.listeners.delete(out));
    let stdin: Writable | undefined;
    if (this.stdin) {
      if (this.term) {
        const t = this.term;
        stdin = new PassThrough().on('data', (d: Buffer) => t.write(d.toString('latin1')));
      } else {
        stdin = this.proc!.stdin!;
      }
    }
    const t = this.term;
    // The exit of the instance attached to, never of a later one (the unit may have been
    // restarted by the time the client asks).
    const exit = this.instanceExit;
    return {
      stdin,
      output: out as Readable,
      resize: (cols, rows) => t?.resize(cols, rows),
      // (the output ends after the exit here, as with the agent's units it ends just before)
      exited: () => exit,
    };
  }
}

/** A pod's worth of test units sharing one network namespace (with loopback up). */
export class RuncTestUnits implements UnitDirectory {
  readonly base: string;
  readonly runcRoot: string;
  readonly prefix: string;
  private readonly units = new Map<string, TestRuncUnit>();
  private netns: string | undefined;

  constructor(opts: { netns?: boolean } = {}) {
    need('runc', 'runc');
    need('busybox', 'busybox-static');
    need('ip', 'iproute2');
    this.base = mkdtempSync(join(tmpdir(), 'cello-streams-'));
    this.runcRoot = join(this.base, 'runc');
    this.prefix = `st${process.pid}${Math.floor(Math.random() * 1e6)}`;
    if (opts.netns !== false) {
      this.netns = `cello-${this.prefix}`;
      execFileSync('ip', ['netns', 'add', this.netns]);
      execFileSync('ip', ['-n', this.netns, 'link', 'set', 'lo', 'up']);
    }
  }

  add(spec: TestUnitSpec): TestRuncUnit {
    const u = new TestRuncUnit(this, spec);
    this.units.set(spec.name, u);
    return u;
  }

  get(name: string): TestRuncUnit | undefined {
    return this.units.get(name);
  }
  list(): TestRuncUnit[] {
    return [...this.units.values()];
  }
  netnsPath(): string | undefined {
    return this.netns === undefined ? undefined : `/run/netns/${this.netns}`;
  }

  async cleanup(): Promise<void> {
    for (const u of this.units.values()) {
      await u.stop();
      u.logs.close();
    }
    if (this.netns !== undefined) {
      try {
        execFileSync('ip', ['netns', 'del', this.netns]);
      } catch {
        /* already gone */
      }
    }
    rmSync(this.base, { recursive: true, force: true });
  }
}
