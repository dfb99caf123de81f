// Shims started ahead of time. Forking from a large Node process is the single most expensive
// step the agent adds before `runc run` (tens of ms on a loaded cell), so one idle shim waits,
// blocked reading its instructions from a pipe; starting a unit only writes three lines to it.
// An idle shim exits when its pipe closes (the agent stopped or died), so none are leaked.
import { type ChildProcess, spawn } from 'node:child_process';

// $1 runc binary, $2 runc root. Reads: instance dir, container id, stdin mode: 0 none
// (/dev/null), 1 held read-write (the unit never sees EOF, and no SIGPIPE-like surprise while
// the agent is away), 2 read-only (stdinOnce: EOF once the agent closes its end).
export const WARM_SHIM = `
read -r d || exit 0
[ -n "$d" ] || exit 0
read -r id
read -r si
if [ "$si" = 2 ]; then
  "$1" --root "$2" --log "$d/runc.log" --log-format json run --bundle "$d" --pid-file "$d/pid" "$id" 0<"$d/stdin" 1<>"$d/stdout" 2<>"$d/stderr"
else
  if [ "$si" = 1 ]; then in="$d/stdin"; else in=/dev/null; fi
  "$1" --root "$2" --log "$d/runc.log" --log-format json run --bundle "$d" --pid-file "$d/pid" "$id" 0<>"$in" 1<>"$d/stdout" 2<>"$d/stderr"
fi
echo $? > "$d/exit.tmp"
mv "$d/exit.tmp" "$d/exit"
`;

export class ShimPool {
  private idle: ChildProcess | undefined;
  private closed = false;

  constructor(
    private readonly runcBinary: string,
    private readonly runcRoot: string,
    private readonly cwd: string,
  ) {}

  private spawnOne(): ChildProcess {
    const c = spawn('/bin/sh', ['-c', WARM_SHIM, 'cello-shim', this.runcBinary, this.runcRoot], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      cwd: this.cwd,
    });
    c.on('error', () => {});
    c.stdin!.on('error', () => {});
    return c;
  }

  /** Starts an instance: the idle shim (or a new one) runs `runc run` for it. */
  start(dir: string, id: string, stdin: 0 | 1 | 2): ChildProcess {
    let c = this.idle;
    this.idle = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null || !c.stdin?.writable) c = this.spawnOne();
    c.stdin!.end(`${dir}\n${id}\n${stdin}\n`);
    // Not at once: fork() blocks the event loop, and the unit that just started is still
    // being watched for its start. The caller primes the pool once the unit runs.
    return c;
  }

  /** Has one shim waiting (call when the agent is otherwise idle). */
  prime(): void {
    if (!this.closed && !this.idle) this.idle = this.spawnOne();
  }

  /** Lets the idle shim exit. */
  close(): void {
    this.closed = true;
    this.idle?.stdin?.end();
    this.idle = undefined;
  }
}
