// Exec and Attach: one session per call. Exec starts a process in the unit (runc exec); Attach
// joins the unit's own stdio. Both validate the start frame, record the session in the audit log
// (who: the caller's certificate identity as `peer`, and the user it acts for as `user`), keep
// flow control both ways and end with exactly one exit frame or status.
import { status as Status, type ServerDuplexStream } from '@grpc/grpc-js';
import { ExecOutput, ExitStatus, type CellAgentServer, type ExecInput, type ExecStart } from '@cello/proto/cell';
import type { AuditSession } from '../../audit/index.js';
import { startExec, type ExecSession } from '../../exec/index.js';
import { signalOfExitCode } from '../../runtime/exit-signal.js';
import type { UnitStdio, UnitView } from '../../units/unit-view.js';
import { failStream, peerOf, type StreamContext } from './context.js';

const ATTACH_EXIT_WAIT_MS = 10_000;

export function execRpc(ctx: StreamContext): CellAgentServer['exec'] {
  return (call) => session(ctx, 'exec', call);
}

export function attachRpc(ctx: StreamContext): CellAgentServer['attach'] {
  return (call) => session(ctx, 'attach', call);
}

/** What a started session drives: the exec'd process, or the unit's own stdio (attach). */
interface SessionIo {
  /** Writes stdin; false when the caller should wait for onceDrain. */
  write(data: Buffer): boolean;
  onceDrain(cb: () => void): void;
  endStdin(): void;
  resize(columns: number, rows: number): void;
  /** Holds back output (the client is slow) and lets it flow again. */
  pause(): void;
  resume(): void;
  /** The client went away: an exec'd process is killed (its exit ends the session); an attach
   * detaches at once and leaves the unit alone. */
  cancel(): void;
}

type Refusal = { code: Status; message: string };
type Output = (stream: 'stdout' | 'stderr', data: Buffer) => void;
type Finish = (exit: ExitStatus | Refusal) => void;
interface Opened {
  io: SessionIo;
  stdinAllowed: boolean;
}

function openExec(ctx: StreamContext, unit: UnitView, s: ExecStart, output: Output, finish: Finish): Opened | Refusal {
  if (s.command.length === 0 || !s.command[0]) return { code: Status.INVALID_ARGUMENT, message: 'start.command must name a program' };
  const target = unit.runc();
  if (target === undefined) return { code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` };
  let proc: ExecSession;
  try {
    proc = startExec({
      target,
      command: s.command,
      tty: s.tty,
      stdin: s.stdin,
      columns: s.size?.columns ?? 0,
      rows: s.size?.rows ?? 0,
      ...(ctx.runcPath ? { runcPath: ctx.runcPath } : {}),
    });
  } catch (err) {
    return { code: Status.INTERNAL, message: `exec failed: ${(err as Error).message}` };
  }
  proc.onOutput(output);
  void proc.result.then((r) => {
    if (r.startError?.runtime) return finish({ code: Status.INTERNAL, message: r.startError.message });
    // A command that cannot be started ends with the exit code a shell (and kubectl exec) gives
    // it, 127 or 126, and runc's reason: a gRPC error here reached the user as a bare exit 1.
    if (r.startError) return finish(ExitStatus.fromPartial({ exitCode: r.exitCode, message: r.startError.message }));
    finish(ExitStatus.fromPartial({ exitCode: r.exitCode, signal: r.signal }));
  });
  const io: SessionIo = {
    write: (d) => proc.write(d),
    onceDrain: (cb) => proc.onceDrain(cb),
    endStdin: () => proc.endStdin(),
    resize: (c, r) => proc.resize(c, r),
    pause: () => proc.pause(),
    resume: () => proc.resume(),
    cancel: () => proc.kill(),
  };
  return { io, stdinAllowed: s.stdin };
}

function openAttach(unit: UnitView, s: ExecStart, output: Output, finish: Finish): Opened | Refusal {
  if (s.stdin && !unit.stdin) return { code: Status.FAILED_PRECONDITION, message: `container "${s.container}" was not declared with stdin` };
  const stdio: UnitStdio | undefined = unit.attach();
  if (stdio === undefined) return { code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` };
  if (unit.tty && s.size && s.size.columns > 0 && s.size.rows > 0) stdio.resize(s.size.columns, s.size.rows);
  stdio.output.on('data', (d: Buffer) => output('stdout', d));
  stdio.output.on('error', () => {});
  const exited = stdio.exited;
  stdio.output.on('end', () => {
    // The output ends a moment before the exit status is known: wait for it (bounded, the
    // client should not hang on a runtime that never says).
    const message = 'the container instance ended';
    if (exited === undefined) return finish(ExitStatus.fromPartial({ exitCode: 0, message }));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, ATTACH_EXIT_WAIT_MS, undefined)));
    void Promise.race([exited.call(stdio), timeout]).then((code) => {
      clearTimeout(timer);
      if (code === undefined) return finish(ExitStatus.fromPartial({ exitCode: -1, message: `${message}; its exit status was not known within ${ATTACH_EXIT_WAIT_MS / 1000} s` }));
      finish(ExitStatus.fromPartial({ exitCode: code, signal: signalOfExitCode(code), message }));
    });
  });
  const stdin = stdio.stdin;
  const io: SessionIo = {
    // (only called when stdin is allowed, which needs the unit's stdin)
    write: (d) => stdin?.write(d) ?? true,
    onceDrain: (cb) => stdin?.once('drain', cb),
    endStdin: () => stdin?.end(),
    resize: (c, r) => stdio.resize(c, r),
    pause: () => stdio.output.pause(),
    resume: () => stdio.output.resume(),
    cancel: () => {
      stdio.output.destroy();
      finish(ExitStatus.fromPartial({ exitCode: 0, message: 'detached' }));
    },
  };
  return { io, stdinAllowed: s.stdin && stdin !== undefined };
}

/** Shared by Exec and Attach: start-frame validation, audit, flow control, one exit frame. */
function session(ctx: StreamContext, kind: 'exec' | 'attach', call: ServerDuplexStream<ExecInput, ExecOutput>): void {
  const { live, metrics, log, audit } = ctx;
  const ac = new AbortController();
  let started = false;
  let finished = false;
  let io: SessionIo | undefined;
  let rec: AuditSession | undefined;
  let closeSession: (() => void) | undefined;
  let stdinAllowed = false;

  const finish: Finish = (exit) => {
    if (finished) return;
    finished = true;
    live.delete(cancelAll);
    closeSession?.();
    if ('code' in exit) {
      rec?.end(ExitStatus.fromPartial({ exitCode: -1, message: exit.message }));
      failStream(call, exit.code, exit.message);
    } else {
      rec?.end(exit);
      if (!ac.signal.aborted) {
        call.write(ExecOutput.fromPartial({ frame: { $case: 'exit', value: exit } }));
        call.end();
      }
    }
    log.info({ kind, session: rec?.id, exit }, `${kind} session ended`);
  };
  // The client went away or ended its side of the stream (see SessionIo.cancel; before the
  // start frame there is nothing to leave: the session just ends).
  const cancel = (how: 'ended' | 'cancelled') => {
    if (finished) return;
    if (how === 'cancelled') ac.abort();
    if (io !== undefined) io.cancel();
    else finish(ExitStatus.fromPartial({ exitCode: 0, message: 'detached' }));
  };
  const cancelAll = () => cancel('cancelled');
  live.add(cancelAll);
  call.on('cancelled', cancelAll);
  call.on('end', () => {
    if (!started) finish({ code: Status.INVALID_ARGUMENT, message: 'stream ended before the start frame' });
    else cancel('ended');
  });
  call.on('error', cancelAll);

  const output: Output = (stream, data) => {
    rec?.output(data);
    metrics?.streamed(kind, 'out', data.length);
    if (finished || ac.signal.aborted) return;
    if (!call.write(ExecOutput.fromPartial({ frame: { $case: stream, value: data } }))) {
      // A slow client slows the command's output (like a terminal would), never the agent.
      io?.pause();
      call.once('drain', () => io?.resume());
    }
  };

  const start = (input: ExecInput) => {
    if (input.frame?.$case !== 'start') return finish({ code: Status.INVALID_ARGUMENT, message: 'the first frame must be start' });
    const s = input.frame.value;
    if (!s.container) return finish({ code: Status.INVALID_ARGUMENT, message: 'start.container is required' });
    const unit = ctx.units.get(s.container);
    if (unit === undefined) return finish({ code: Status.NOT_FOUND, message: `container "${s.container}" not found in this pod` });
    if (!unit.running()) return finish({ code: Status.FAILED_PRECONDITION, message: `container "${s.container}" is not running` });
    const opened = kind === 'exec' ? openExec(ctx, unit, s, output, finish) : openAttach(unit, s, output, finish);
    if ('code' in opened) return finish(opened);
    io = opened.io;
    stdinAllowed = opened.stdinAllowed;
    started = true;
    closeSession = metrics?.openSession(kind);
    rec = audit?.begin({ kind, container: s.container, command: kind === 'exec' ? s.command : [], tty: s.tty, stdin: s.stdin, peer: peerOf(call), user: s.requestedBy });
    log.info({ kind, session: rec?.id, container: s.container, tty: s.tty, stdin: s.stdin, user: s.requestedBy }, `${kind} session started`);
  };

  call.on('data', (input: ExecInput) => {
    if (finished) return;
    if (!started) return start(input);
    const f = input.frame;
    switch (f?.$case) {
      case 'stdin':
        if (!stdinAllowed) return;
        rec?.input(f.value);
        metrics?.streamed(kind, 'in', f.value.length);
        // A command that reads slowly slows the client down instead of filling our memory.
        if (io && !io.write(f.value)) {
          call.pause();
          io.onceDrain(() => call.resume());
        }
        return;
      case 'resize':
        if (f.value.columns > 0 && f.value.rows > 0) io?.resize(f.value.columns, f.value.rows);
        return;
      case 'stdinEof':
        io?.endStdin();
        return;
      case 'start':
        return finish({ code: Status.INVALID_ARGUMENT, message: 'start may only be the first frame' });
      default:
        return;
    }
  });
}
