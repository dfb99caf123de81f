// A throwaway machine made from a cached root filesystem: an overlayfs whose upper layer is
// this test's own, entered with chroot. Every command runs in a private mount namespace
// (unshare) that mounts the overlay, /proc, /sys, /dev, a fresh /run and a plain directory at
// /var/lib/cello (the agent's state), so nothing stays
// mounted on the host when the command ends, whatever happens to the test.
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ENTER = `set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
mount -t proc proc "$4/proc"
mount --rbind /sys "$4/sys"
mount --rbind /dev "$4/dev"
mount -t tmpfs -o mode=0755 tmpfs "$4/run"
# The agent stacks overlayfs mounts under its state directory, and overlayfs cannot use an
# overlayfs as its upper layer: /var/lib/cello is a plain directory, as on an instance's disk.
mkdir -p "$4/var/lib/cello"
mount --bind "$5" "$4/var/lib/cello"
m=$4
shift 5
exec chroot "$m" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"`;

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export class Chroot {
  readonly dir: string;
  readonly upper: string;
  private readonly work: string;
  private readonly merged: string;
  /** Host directory mounted at /var/lib/cello. */
  readonly state: string;

  constructor(readonly lower: string) {
    this.dir = mkdtempSync(join(tmpdir(), 'cello-chroot-'));
    this.upper = join(this.dir, 'upper');
    this.work = join(this.dir, 'work');
    this.merged = join(this.dir, 'merged');
    this.state = join(this.dir, 'state');
    for (const d of [this.upper, this.work, this.merged, this.state]) mkdirSync(d);
  }

  private args(cmd: string[]): string[] {
    return ['--mount', '--propagation', 'private', '--', 'sh', '-c', ENTER, 'enter', this.lower, this.upper, this.work, this.merged, this.state, ...cmd];
  }

  /** Runs a command inside; never throws on a non-zero exit. */
  run(cmd: string[], opts: { input?: string; timeoutMs?: number } = {}): RunResult {
    const r: SpawnSyncReturns<string> = spawnSync('unshare', this.args(cmd), { encoding: 'utf8', input: opts.input ?? '', timeout: opts.timeoutMs ?? 300_000 });
    if (r.error) throw r.error;
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  /**
   * Like run, but without blocking this process: needed whenever the command talks to a
   * server that this same test process serves (a metadata double, a controller).
   */
  runAsync(cmd: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      const child = spawn('unshare', this.args(cmd), { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ status: code ?? -1, stdout, stderr });
      });
    });
  }

  /** Runs a shell command inside and returns its stdout; throws with stderr on failure. */
  sh(script: string, timeoutMs?: number): string {
    const r = this.run(['sh', '-c', script], timeoutMs ? { timeoutMs } : {});
    if (r.status !== 0) throw new Error(`in chroot: ${script}: exit ${r.status}\n${r.stderr}`);
    return r.stdout;
  }

  /** Starts a long-running command inside. Killing it ends its mount namespace too. */
  spawn(cmd: string[]): ChildProcess {
    return spawn('unshare', this.args(cmd), { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /**
   * Runs a command in the mount namespace and root of a process started with spawn() (the
   * overlay must not be mounted twice while that process uses it).
   */
  runBeside(pid: number, cmd: string[]): RunResult {
    const r = spawnSync(
      'nsenter',
      ['--target', String(pid), '--mount', '--root', '--wd=/', '/usr/bin/env', '-i', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...cmd],
      { encoding: 'utf8', timeout: 60_000 },
    );
    if (r.error) throw r.error;
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  /**
   * Runs a host shell script with the machine's file system (overlay plus /var/lib/cello, and
   * nothing else mounted) at $ROOT, e.g. to turn it into a disk image.
   */
  withRoot(script: string, timeoutMs = 300_000): string {
    const wrapper = `set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
mkdir -p "$4/var/lib/cello"
mount --bind "$5" "$4/var/lib/cello"
ROOT=$4
${script}`;
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', wrapper, 'root', this.lower, this.upper, this.work, this.merged, this.state], {
      encoding: 'utf8',
      timeout: timeoutMs,
    });
    if (r.error) throw r.error;
    if (r.status !== 0) throw new Error(`withRoot: exit ${r.status}\n${r.stderr}`);
    return r.stdout;
  }

  /** Copies a host file into the machine (written into the upper layer, before mounting). */
  put(hostFile: string, path: string): void {
    const dest = join(this.upper, path);
    mkdirSync(join(dest, '..'), { recursive: true });
    execFileSync('cp', ['-p', hostFile, dest]);
  }

  destroy(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
