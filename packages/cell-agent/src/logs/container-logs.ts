// One unit's logs across its runs: the current instance and the previous one, as CRI log files
// that survive an agent restart, and the entry point for reads.
import { mkdirSync } from 'node:fs';
import type { LogChunk, LogsRequest } from '@cello/proto/cell';
import type { LogSink } from '../units/unit-view.js';
import { LogInstance } from './instance.js';
import { LogsError, resolveLimits, type ContainerLogsOptions, type LogLimits } from './options.js';
import { readInstance } from './reader.js';
import { recoverInstances } from './recovery.js';

/** The logs of one unit across its instances (current and previous). */
export class ContainerLogs {
  private readonly opts: LogLimits;
  private readonly dir: string;
  private current: LogInstance | undefined;
  private previous: LogInstance | undefined;
  private closed = false;

  constructor(opts: ContainerLogsOptions) {
    this.dir = opts.dir;
    this.opts = resolveLimits(opts);
    mkdirSync(this.dir, { recursive: true });
    // Re-adopt what an earlier agent process left (see recovery.ts).
    ({ previous: this.previous, current: this.current } = recoverInstances(this.dir, this.opts));
  }

  /** A new run of the unit begins: the current one (ended or not) becomes the previous. */
  startInstance(): LogSink {
    if (this.closed) throw new Error('ContainerLogs is closed');
    const old = this.current;
    if (old !== undefined) {
      old.end();
      this.previous?.deleteFiles();
      this.previous = old;
    }
    const inst = new LogInstance((old?.id ?? -1) + 1, this.dir, this.opts);
    this.current = inst;
    return {
      write: (stream, chunk) => inst.write(stream, chunk),
      end: () => inst.end(),
    };
  }

  /** Ends the current instance (followers finish) and stops accepting output. Files stay. */
  close(): void {
    this.closed = true;
    this.current?.end();
  }

  /**
   * Reads per the request: tail by lines and/or content bytes, since a time, the previous
   * instance, and follow (until the instance ends or `signal` aborts). Each yielded chunk holds
   * whole records; `droppedBytes` is set when data this reader had not yet read was rotated away.
   */
  async *read(req: LogsRequest, signal: AbortSignal): AsyncIterable<LogChunk> {
    if (req.tailLines !== undefined && req.tailLines < 0) throw new LogsError('InvalidArgument', 'tail_lines must not be negative');
    if (req.limitBytes !== undefined && req.limitBytes < 0) throw new LogsError('InvalidArgument', 'limit_bytes must not be negative');
    if (req.sinceSeconds !== undefined && req.sinceSeconds < 0) throw new LogsError('InvalidArgument', 'since_seconds must not be negative');
    const inst = req.previous ? this.previous : this.current;
    if (inst === undefined) {
      if (req.previous) throw new LogsError('NotFound', 'previous terminated instance not found');
      return; // never started: no logs yet
    }
    yield* readInstance(inst, req, signal, this.opts.ringBytes, () => this.closed);
  }
}
