// The agent's own log lines, kept in memory (bounded) besides stderr, so the controller can
// stream them (AgentLogs, `cellctl logs cell/ID`) from a cell nobody can log in to. stderr
// stays a synchronous write: a line logged just before exit is never lost.
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';

export class OwnLogs {
  private readonly lines: string[] = [];
  private bytes = 0;
  private readonly followers = new Set<(line: string) => void>();

  constructor(private readonly maxBytes = 2 * 1024 * 1024) {}

  push(text: string): void {
    // pino writes one line per call; split anyway so tails count lines.
    for (const line of text.split(/(?<=\n)/)) {
      if (!line) continue;
      this.lines.push(line);
      this.bytes += line.length;
      for (const f of this.followers) f(line);
    }
    while (this.bytes > this.maxBytes && this.lines.length > 1) this.bytes -= this.lines.shift()!.length;
  }

  /** The newest `n` lines kept (all when n is 0). */
  tail(n: number): string[] {
    return n > 0 ? this.lines.slice(-n) : [...this.lines];
  }

  /** Calls `f` with each new line until the returned function is called. */
  follow(f: (line: string) => void): () => void {
    this.followers.add(f);
    return () => this.followers.delete(f);
  }

  /** A logger destination: each line to `fd` (stderr) and into memory. */
  tee(fd = 2): Writable {
    return new Writable({
      decodeStrings: false,
      write: (chunk: string | Buffer, _enc, cb) => {
        const s = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
        try {
          writeSync(fd, s);
        } catch {
          // stderr gone: the lines are still kept.
        }
        this.push(s);
        cb();
      },
    });
  }
}
