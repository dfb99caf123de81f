// FIFOs made ahead of time. Node has no mkfifo(2), and forking `mkfifo` from a large Node
// process costs milliseconds (tens on a loaded machine) on the path from ApplyPod to a running
// unit; a rename(2) out of a pool costs microseconds. The pool refills in the background.
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';

export class FifoPool {
  private free: string[] = [];
  private seq = 0;
  private refilling: Promise<void> | undefined;

  constructor(
    private readonly dir: string,
    private readonly low = 12,
    private readonly batch = 24,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.free = readdirSync(dir).map((n) => join(dir, n));
    this.seq = this.free.length;
  }

  private make(n: number): Promise<void> {
    const paths = Array.from({ length: n }, () => join(this.dir, `f${process.pid}-${++this.seq}`));
    return new Promise((resolve, reject) =>
      execFile('mkfifo', ['-m', '0600', ...paths], (err, _o, stderr) => {
        if (err) return reject(new Error(`mkfifo: ${String(stderr).trim() || err.message}`));
        this.free.push(...paths);
        resolve();
      }),
    );
  }

  /** Fills the pool now (at agent start). */
  async fill(): Promise<void> {
    if (this.free.length < this.batch) await this.make(this.batch - this.free.length);
  }

  /** Moves FIFOs to the given paths. */
  async take(targets: string[]): Promise<void> {
    if (this.free.length < targets.length) await this.make(Math.max(this.batch, targets.length));
    for (const t of targets) renameSync(this.free.pop()!, t);
    // Refilled a moment later, off the path of the unit being started (fork blocks the loop).
    if (this.free.length < this.low && !this.refilling) {
      this.refilling = new Promise<void>((r) => setTimeout(r, 500).unref())
        .then(() => this.make(this.batch))
        .catch(() => {})
        .finally(() => (this.refilling = undefined));
    }
  }
}
