// The seam between the unit runtime (which starts, supervises and stops units) and the stream
// services (logs, exec, attach, port-forward, stats). The runtime implements these interfaces;
// the stream services use only them. Every implementation (the pod manager, the stream tests'
// runc double) runs the contract suite in test/units/contract.ts.
import type { Readable, Writable } from 'node:stream';

export type StdStream = 'stdout' | 'stderr';

/** Where a unit instance's output goes. One sink per run of the unit. */
export interface LogSink {
  /** `chunk` becomes the sink's (it may keep it): pass a buffer you will not reuse, as a
   * stream's 'data' buffers are. Saves copying every byte of output once more. */
  write(stream: StdStream, chunk: Buffer): void;
  /** The instance ended; flushes a last partial line. */
  end(): void;
}

/** The pieces of runc state that `runc exec` / `runc state` need. */
export interface RuncTarget {
  /** runc --root */
  root: string;
  /** container id */
  id: string;
  /** The instance's bundle config.json: its process is what an exec runs, with the command's args. */
  config?: string;
}

/** What stream services may know about one unit. */
export interface UnitView {
  readonly name: string;
  /** True while the unit's current instance is running. */
  running(): boolean;
  /** The current instance's runc container, when running. */
  runc(): RuncTarget | undefined;
  /** PID (on the host) of the current instance's init process, when running. */
  pid(): number | undefined;
  /** cgroup of the unit, relative to each hierarchy's mount point (e.g. "/cello/pod/web"). */
  cgroupPath(): string;
  /** Declared in the spec: stdin is open / a tty is allocated. */
  readonly stdin: boolean;
  readonly tty: boolean;
  restartCount(): number;
  startedAt(): Date | undefined;
  memoryLimitBytes(): number | undefined;
  /** The unit's own stdio for Attach, while running. */
  attach(): UnitStdio | undefined;
}

export interface UnitStdio {
  /** Writes to the unit's stdin (when declared with stdin). */
  stdin: Writable | undefined;
  /** The unit's output as it is produced, from now on. */
  output: Readable;
  /** Resize the unit's tty (tty units only). */
  resize(columns: number, rows: number): void;
  /** Resolves with the instance's exit code once it has exited (for Attach's exit frame);
   * ask when the output has ended. */
  exited?(): Promise<number>;
}

/** The pod's units, as the stream services see them. */
export interface UnitDirectory {
  get(name: string): UnitView | undefined;
  list(): UnitView[];
  /** Path of the pod's network namespace (e.g. /proc/PID/ns/net or /run/netns/X), if any. */
  netnsPath(): string | undefined;
}
