// Container output into the kubelet's log files: each started container's log is followed from
// the controller's Logs stream (the same path as `cellctl logs -f`) and written to
// `log_directory/log_path` in the CRI format the kubelet reads (`<RFC3339Nano> <stream> <P|F>
// <line>`), so `kubectl logs` works through a real kubelet. ReopenContainerLog opens the path
// anew (the kubelet renamed the file when it rotated it); the old file is not written again.
import { mkdirSync, openSync, closeSync, statSync, writeSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CelloError, errMsg } from '@cello/proto';
import { LogsRequest as AgentLogsRequest, LogStream, type LogChunk, type LogEntry } from '@cello/proto/cell';
import type { ControllerApiClient } from '@cello/controller/client';

interface Follower {
  path: string;
  fd: number;
  stream?: ClientReadableStream<LogChunk>;
  stopped: boolean;
  /** Resolves when the stream ended (the unit exited and its output is all written) or failed. */
  done: Promise<void>;
}

/** `2026-12-07T15:50:06.123456789Z`: RFC 3339 with nanoseconds, as the CRI log format has it. */
function timestamp(e: LogEntry): string {
  const iso = new Date(Number(e.timeSeconds) * 1000).toISOString();
  return `${iso.slice(0, 19)}.${String(e.timeNanos).padStart(9, '0')}Z`;
}

export function criLogLine(e: LogEntry): string {
  return `${timestamp(e)} ${e.stream === LogStream.LOG_STREAM_STDERR ? 'stderr' : 'stdout'} ${e.partial ? 'P' : 'F'} ${Buffer.from(e.line).toString('utf8')}\n`;
}

/** The file a container logs to; undefined when the kubelet gave no log path. */
export function logFile(logDirectory: string, logPath: string): string | undefined {
  if (!logPath) return undefined;
  if (isAbsolute(logPath)) return logPath;
  if (!logDirectory) return undefined;
  return join(logDirectory, logPath);
}

export class ContainerLogs {
  private readonly followers = new Map<string, Follower>();

  constructor(
    private readonly controller: ControllerApiClient,
    private readonly logger: Logger,
  ) {}

  private open(path: string): number {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    return openSync(path, 'a', 0o640);
  }

  /** Creates the file (empty) if it is not there. */
  create(path: string): void {
    closeSync(this.open(path));
  }

  /**
   * Follows the unit's log into `path` (created now, so it exists once the container started).
   * `resume`: after a restart of the shim, only lines after the file's last write.
   */
  follow(id: string, pod: { namespace: string; name: string }, unit: string, path: string, o: { resume?: boolean } = {}): void {
    this.stop(id);
    let since: Date | undefined;
    if (o.resume) {
      try {
        since = statSync(path).mtime;
      } catch {
        /* no file yet: from the start */
      }
    }
    let ended!: () => void;
    const f: Follower = { path, fd: this.open(path), stopped: false, done: new Promise<void>((r) => (ended = r)) };
    this.followers.set(id, f);
    const options = AgentLogsRequest.fromPartial({ container: unit, follow: true, ...(since ? { sinceTime: since } : {}) });
    const stream = this.controller.client.logs({ pod, options });
    f.stream = stream;
    stream.on('data', (chunk: LogChunk) => {
      if (f.stopped) return;
      const text = chunk.entries.map(criLogLine).join('');
      if (text) writeSync(f.fd, text);
    });
    stream.on('error', (err) => {
      if (!f.stopped) this.logger.warn({ container: id, err: errMsg(err) }, 'container log stream ended with an error');
      ended();
    });
    stream.on('end', () => {
      this.logger.debug({ container: id }, 'container log stream ended');
      ended();
    });
  }

  /**
   * Waits (at most `ms`) until an exited container's output is all in its file, so a status that
   * says EXITED is never read before the log it implies (containerd reports an exit after its IO
   * is drained, too).
   */
  async drained(id: string, ms: number): Promise<void> {
    const f = this.followers.get(id);
    if (!f) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([f.done, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    // The unit ended for good (the kubelet restarts with a new container): nothing more will come.
    this.stop(id);
  }

  /** ReopenContainerLog: the path is opened anew; the renamed file is not written again. */
  reopen(id: string): void {
    const f = this.followers.get(id);
    if (!f || f.stopped) throw new CelloError('FailedPrecondition', `container ${id}: its log is not being written (not running, or no log_path)`);
    const old = f.fd;
    f.fd = this.open(f.path);
    closeSync(old);
  }

  stop(id: string): void {
    const f = this.followers.get(id);
    if (!f) return;
    f.stopped = true;
    f.stream?.cancel();
    closeSync(f.fd);
    this.followers.delete(id);
  }

  stopAll(): void {
    for (const id of [...this.followers.keys()]) this.stop(id);
  }
}
