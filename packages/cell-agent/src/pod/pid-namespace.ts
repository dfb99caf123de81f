// spec.shareProcessNamespace: one PID namespace for all of the pod's units, the one the
// kubelet's pause container provides. Its init is a detached `unshare --pid --fork` shell that
// lives until the pod is deleted and reaps the orphans the units leave (dash reaps any child
// while it waits, as pause does). Its host PID is kept in the state dir, so a restarted agent
// finds the namespace again.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const MARKER = 'cello-pid-namespace';
// PID 1 of the namespace: waits for ever (so reaping every child that exits), ends on TERM.
const INIT = "trap 'exit 0' TERM; while :; do sleep 2147483647 & wait; done";

export class SharedPidNamespace {
  constructor(
    /** Where the init's host PID is kept. */
    private readonly file: string,
  ) {}

  /** The namespace's path for an OCI spec (/proc/<pid>/ns/pid), started if need be. */
  async ensure(): Promise<string> {
    const running = this.current();
    if (running) return `/proc/${running}/ns/pid`;
    const holder = spawn('unshare', ['--pid', '--fork', '--kill-child', '/bin/sh', '-c', INIT, MARKER], { detached: true, stdio: 'ignore' });
    holder.unref();
    const spawned = new Promise<never>((_, reject) => holder.once('error', (err) => reject(new Error(`cannot start the pod's PID namespace: ${err.message}`))));
    const deadline = Date.now() + 10_000;
    for (;;) {
      const init = holder.pid ? childOf(holder.pid) : undefined;
      if (init !== undefined && isOurs(init)) {
        writeFileSync(this.file, `${init}\n`);
        return `/proc/${init}/ns/pid`;
      }
      if (holder.exitCode !== null || Date.now() > deadline) throw new Error(`cannot start the pod's PID namespace (unshare exited with ${holder.exitCode ?? 'nothing in 10 s'})`);
      await Promise.race([sleep(20), spawned]);
    }
  }

  /** Ends the namespace (every process left in it dies with its init). */
  remove(): void {
    const pid = this.current();
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(this.file, { force: true });
  }

  private current(): number | undefined {
    if (!existsSync(this.file)) return undefined;
    const pid = Number(readFileSync(this.file, 'utf8').trim());
    return pid > 0 && isOurs(pid) ? pid : undefined;
  }
}

function childOf(pid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0];
    return first ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}

/** True for a live init of one of these namespaces (not a reused PID). */
function isOurs(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(MARKER);
  } catch {
    return false;
  }
}
