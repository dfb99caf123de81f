// The controller's recent log lines kept in memory (bounded), so `cellctl dump` can ship them
// without access to wherever stderr went. Lines go to stderr synchronously as before (a fatal
// line before process.exit is never lost), and into the ring.
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';

export class LogRing {
  private readonly lines: string[] = [];
  private bytes = 0;

  constructor(private readonly maxBytes = 4 * 1024 * 1024) {}

  push(line: string): void {
    this.lines.push(line);
    this.bytes += line.length;
    while (this.bytes > this.maxBytes && this.lines.length > 1) this.bytes -= this.lines.shift()!.length;
  }

  text(): string {
    return this.lines.join('');
  }

  /** A destination for createLogger: every line to `fd` (stderr) and into the ring. */
  tee(fd = 2): Writable {
    return new Writable({
      decodeStrings: false,
      write: (chunk: string | Buffer, _enc, cb) => {
        const s = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
        this.push(s);
        try {
          writeSync(fd, s);
        } catch {
          // stderr closed: the ring still has the line.
        }
        cb();
      },
    });
  }
}
