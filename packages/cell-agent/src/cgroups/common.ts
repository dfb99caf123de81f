import { readFile, readdir, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export async function readText(p: string): Promise<string> {
  return (await readFile(p, 'utf8')).trim();
}

export async function readNum(p: string): Promise<number> {
  const t = await readText(p);
  return t === 'max' ? Number.POSITIVE_INFINITY : Number(t);
}

export async function readKeyed(p: string): Promise<Map<string, number>> {
  const m = new Map<string, number>();
  for (const line of (await readText(p)).split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined) m.set(k, Number(v));
  }
  return m;
}

/** Every process listed in cgroup.procs of `dir` and its descendants. */
export async function treePids(dir: string): Promise<number[]> {
  const out: number[] = [];
  const walk = async (d: string): Promise<void> => {
    let procs = '';
    try {
      procs = await readFile(join(d, 'cgroup.procs'), 'utf8');
    } catch {
      return;
    }
    for (const l of procs.split('\n')) if (l.trim()) out.push(Number(l));
    let entries: string[] = [];
    try {
      entries = await readdir(d);
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e);
      try {
        if ((await stat(p)).isDirectory()) await walk(p);
      } catch {
        /* removed meanwhile */
      }
    }
  };
  await walk(dir);
  return out;
}

export async function killTree(dir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await treePids(dir);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    if (Date.now() > deadline) throw new Error(`processes still in cgroup ${dir} after ${timeoutMs} ms: ${pids.join(',')}`);
    await sleep(20);
  }
}

/** rmdir children first: cgroupfs directories only go away empty and bottom-up. */
export async function removeTree(dir: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e);
    try {
      if ((await stat(p)).isDirectory()) await removeTree(p);
    } catch {
      /* gone */
    }
  }
  try {
    await rmdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
