// A process's own recent log lines kept in memory, bounded in bytes, beside stderr: the
// controller ships them in `cellctl dump`, the cell agent streams them (AgentLogs) from a cell
// nobody can log in to. stderr stays a synchronous write, so a line logged just before exit is
// never lost. Lines live in a circular array: dropping the oldest is an index step, not an
// Array.shift() that moves every kept line.
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';

export class LineRing {
  private slots: string[] = new Array<string>(64);
  private head = 0; // index of the oldest kept line
  private count = 0;
  private bytes = 0;
  private readonly followers = new Set<(line: string) => void>();

  constructor(private readonly maxBytes: number) {}

  /** Keeps each line of `text` (pino writes one per call; split anyway so tails count lines). */
  push(text: string): void {
    for (const line of text.split(/(?<=\n)/)) {
      if (!line) continue;
      this.append(line);
      for (const f of this.followers) f(line);
    }
    // The newest line is kept even when it alone is over the bound.
    while (this.bytes > this.maxBytes && this.count > 1) this.dropOldest();
  }

  /** The newest `n` lines kept, oldest first (all when n is 0). */
  tail(n: number): string[] {
    const take = n > 0 ? Math.min(n, this.count) : this.count;
    const out = new Array<string>(take);
    for (let i = 0; i < take; i++) out[i] = this.slots[(this.head + this.count - take + i) % this.slots.length]!;
    return out;
  }

  /** Every kept line as one text. */
  text(): string {
    return this.tail(0).join('');
  }

  /** Calls `f` with each new line until the returned function is called. */
  follow(f: (line: string) => void): () => void {
    this.followers.add(f);
    return () => this.followers.delete(f);
  }

  /** A logger destination: each line to `fd` (stderr) and into the ring. */
  tee(fd = 2): Writable {
    return new Writable({
      decodeStrings: false,
      write: (chunk: string | Buffer, _enc, cb) => {
        const s = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
        try {
          writeSync(fd, s);
        } catch {
          // stderr gone: the ring still has the line.
        }
        this.push(s);
        cb();
      },
    });
  }

  private append(line: string): void {
    if (this.count === this.slots.length) this.grow();
    this.slots[(this.head + this.count) % this.slots.length] = line;
    this.count++;
    this.bytes += line.length;
  }

  private dropOldest(): void {
    this.bytes -= this.slots[this.head]!.length;
    this.slots[this.head] = '';
    this.head = (this.head + 1) % this.slots.length;
    this.count--;
  }

  // Doubling keeps appends amortised O(1) while the byte bound, not a line count, limits size.
  private grow(): void {
    const next = new Array<string>(this.slots.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = this.slots[(this.head + i) % this.slots.length]!;
    this.slots = next;
    this.head = 0;
  }
}
