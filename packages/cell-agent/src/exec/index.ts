// One `runc exec` session. runc exec takes the process spec (user, groups, capabilities, env,
// cwd, rlimits, no_new_privs) from the container's bundle config.json and joins all of the
// container's namespaces and its cgroup, so the command runs exactly as the unit does; we only
// choose tty or pipes.
//
// - With a tty, runc runs on a node-pty: with a terminal and no console socket, runc creates the
//   container's console and proxies it to its own terminal, forwarding SIGWINCH, so resizing our
//   pty resizes the container's. runc copies our size to that console only after the command
//   has started, so a command that asks at once (`stty size`) would find 0x0 now and then; the
//   process is therefore given as `--process` (the bundle's own process with the command's
//   args) with `consoleSize`, which runc's init applies before it execs the command.
// - `--pid-file` gives us the exec'd process's host PID so cancelling the session can SIGKILL
//   the process itself (killing runc alone would leave it running in the container).
// - `--log` (json) separates runc's own errors (a command that does not exist, a container that
//   is gone) from the command's output, so they become a clean error instead of stderr bytes.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as pty from 'node-pty';
import type { RuncTarget } from '../units/unit-view.js';
import { exitCodeOfSignal, signalName, signalOfExitCode } from '../runtime/exit-signal.js';

export interface ExecOptions {
  target: RuncTarget;
  command: string[];
  tty: boolean;
  /** Keep stdin open for the caller; otherwise the command reads EOF at once. */
  stdin: boolean;
  columns?: number;
  rows?: number;
  runcPath?: string;
}

export interface ExecResult {
  exitCode: number;
  /** Signal name when the process died of a signal. */
  signal: string;
  /**
   * Set when the command could not be started. A command that does not exist or cannot be
   * executed ends like a shell's (127 / 126, the message on the exit frame); `runtime` marks a
   * failure of the agent's own runtime (runc missing), which is the agent's error, not the command's.
   */
  startError?: { notFound: boolean; message: string; runtime?: boolean };
}

export type OutputStream = 'stdout' | 'stderr';

export interface ExecSession {
  readonly result: Promise<ExecResult>;
  onOutput(cb: (stream: OutputStream, data: Buffer) => void): void;
  /** False when the command is not keeping up: wait for onceDrain before writing more. */
  write(data: Buffer): boolean;
  onceDrain(cb: () => void): void;
  endStdin(): void;
  resize(columns: number, rows: number): void;
  /** Flow control: stop and restart reading the command's output. */
  pause(): void;
  resume(): void;
  /** Kills the exec'd process (SIGKILL) and runc. */
  kill(): void;
}

/** runc's exit code, with the signal a 128+N code stands for (runtime/exit-signal.ts). */
function interpret(code: number): ExecResult {
  return { exitCode: code, signal: signalOfExitCode(code) };
}

function runcError(logPath: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(logPath, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n').reverse()) {
    if (!line) continue;
    try {
      const rec = JSON.parse(line) as { level?: string; msg?: string };
      if ((rec.level === 'error' || rec.level === 'fatal') && rec.msg) return rec.msg;
    } catch {
      /* not json */
    }
  }
  return undefined;
}

/**
 * The process file of a tty exec: the unit's own process (user, env, cwd, capabilities,
 * rlimits, no_new_privs: what `runc exec` takes from the bundle anyway) with the command as its
 * args, a terminal, and the console's size from its first instant. Undefined (plain `runc exec
 * -t`) when the bundle's config cannot be read.
 */
function ttyProcess(config: string, command: string[], columns: number, rows: number, work: string): string | undefined {
  let proc: Record<string, unknown> | undefined;
  try {
    proc = (JSON.parse(readFileSync(config, 'utf8')) as { process?: Record<string, unknown> }).process;
  } catch {
    return undefined;
  }
  if (!proc) return undefined;
  const file = join(work, 'process.json');
  writeFileSync(file, JSON.stringify({ ...proc, args: command, terminal: true, consoleSize: { height: rows, width: columns } }), { mode: 0o600 });
  return file;
}

export function startExec(opts: ExecOptions): ExecSession {
  if (opts.command.length === 0) throw new Error('command must not be empty');
  const work = mkdtempSync(join(tmpdir(), 'cello-exec-'));
  const pidFile = join(work, 'pid');
  const logFile = join(work, 'runc.log');
  const runc = opts.runcPath ?? 'runc';
  const args = ['--root', opts.target.root, '--log', logFile, '--log-format', 'json', 'exec', '--pid-file', pidFile];
  const columns = opts.columns || 80;
  const rows = opts.rows || 24;
  const processFile = opts.tty && opts.target.config ? ttyProcess(opts.target.config, opts.command, columns, rows, work) : undefined;
  if (processFile) args.push('--process', processFile, opts.target.id);
  else {
    if (opts.tty) args.push('-t');
    args.push(opts.target.id, ...opts.command);
  }

  let outputCb: (stream: OutputStream, data: Buffer) => void = () => {};
  let finished = false;
  const execPid = (): number | undefined => {
    try {
      const n = Number(readFileSync(pidFile, 'utf8').trim());
      return n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  };
  const finish = (code: number, sig: string | undefined): ExecResult => {
    finished = true;
    let result: ExecResult = sig ? { exitCode: exitCodeOfSignal(sig), signal: sig } : interpret(code);
    if (code === 255) {
      const err = runcError(logFile);
      if (err !== undefined && /exec failed|unable to start/.test(err)) {
        const notFound = /not found|no such file/i.test(err);
        result = { exitCode: notFound ? 127 : 126, signal: '', startError: { notFound, message: err } };
      }
    }
    rmSync(work, { recursive: true, force: true });
    return result;
  };

  if (opts.tty) {
    const term = pty.spawn(runc, args, {
      cols: columns,
      rows,
      // Raw bytes both ways: no decoding of the program's output.
      encoding: null as unknown as string,
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', TERM: 'xterm' },
    });
    const result = new Promise<ExecResult>((resolve) => {
      term.onExit(({ exitCode, signal }) => {
        const name = signal ? signalName(signal) || undefined : undefined;
        resolve(finish(exitCode, name));
      });
    });
    term.onData((d: string | Buffer) => outputCb('stdout', typeof d === 'string' ? Buffer.from(d, 'latin1') : d));
    // runc sets the container console's size and puts our pty in raw mode only once the process
    // is running (it then writes the pid file). Input sent earlier would be cooked by our pty
    // and could run before the size is set, so hold it until then, and nudge runc with a
    // SIGWINCH (its own first resize can race with receiving the console).
    let held: Buffer[] | undefined = [];
    const release = () => {
      if (held === undefined) return;
      watcher?.close();
      clearTimeout(fallback);
      try {
        process.kill(term.pid, 'SIGWINCH');
      } catch {
        /* exited */
      }
      for (const b of held) term.write(b as unknown as string);
      held = undefined;
    };
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(work, () => {
        if (existsSync(pidFile)) release();
      });
    } catch {
      /* fall back to the timer */
    }
    const fallback = setTimeout(release, 5000);
    void result.then(() => {
      held = undefined;
      watcher?.close();
      clearTimeout(fallback);
    });
    if (existsSync(pidFile)) release();
    return {
      result,
      onOutput: (cb) => (outputCb = cb),
      write: (data) => {
        if (held) held.push(data);
        else term.write(data as unknown as string);
        return true; // a pty has no write-side flow control we can observe
      },
      onceDrain: (cb) => cb(),
      // A terminal has no EOF of its own; ^D is what a user would type.
      endStdin: () => (held ? held.push(Buffer.from('\x04')) : term.write('\x04')),
      resize: (c, r) => {
        if (!finished && c > 0 && r > 0) term.resize(c, r);
      },
      pause: () => term.pause(),
      resume: () => term.resume(),
      kill: () =>
        killSession(
          execPid,
          () => term.kill('SIGKILL'),
          () => finished,
        ),
    };
  }

  const child = spawn(runc, args, { stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  child.stdin?.on('error', () => {}); // EPIPE once the command exits: nothing to do
  child.stdout!.on('data', (d: Buffer) => outputCb('stdout', d));
  child.stderr!.on('data', (d: Buffer) => outputCb('stderr', d));
  const result = new Promise<ExecResult>((resolve) => {
    child.on('error', (err) => {
      finished = true;
      rmSync(work, { recursive: true, force: true });
      resolve({ exitCode: 127, signal: '', startError: { notFound: false, runtime: true, message: `cannot run runc: ${err.message}` } });
    });
    child.on('close', (code, sig) => {
      if (!finished) resolve(finish(code ?? 0, sig ?? undefined));
    });
  });
  return {
    result,
    onOutput: (cb) => (outputCb = cb),
    write: (data) => child.stdin?.write(data) ?? true,
    onceDrain: (cb) => {
      if (child.stdin && !child.stdin.destroyed && child.stdin.writableNeedDrain) child.stdin.once('drain', cb).once('close', cb);
      else cb();
    },
    endStdin: () => child.stdin?.end(),
    resize: () => {},
    pause: () => {
      child.stdout!.pause();
      child.stderr!.pause();
    },
    resume: () => {
      child.stdout!.resume();
      child.stderr!.resume();
    },
    kill: () =>
      killSession(
        execPid,
        () => child.kill('SIGKILL'),
        () => finished,
      ),
  };
}

function killSession(execPid: () => number | undefined, killRunc: () => void, done: () => boolean): void {
  if (done()) return;
  const pid = execPid();
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    return; // runc exits by itself once its process is gone
  }
  // Still starting: the pid file appears once the process exists; kill runc and then it.
  killRunc();
  setTimeout(() => {
    const later = execPid();
    if (later !== undefined && !done()) {
      try {
        process.kill(later, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }, 200).unref();
}
