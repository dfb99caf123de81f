// Preloaded into image-puller by run.mjs (node --import): at exit, prints the CPU seconds of the main
// thread and of all other threads (zlib on the libuv pool, V8's helpers) to stderr. Node runs
// the fetch, hashing, tar parsing and every file-system call on its main thread, so that
// thread's time is the pull's critical path on two cores; the process total hides it.
import { readdirSync, readFileSync, writeSync } from 'node:fs';

process.on('exit', () => {
  let main = 0;
  let other = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = (Number(f[11]) + Number(f[12])) / 100; // utime + stime, USER_HZ = 100
    if (Number(tid) === process.pid) main += cpu;
    else other += cpu;
  }
  writeSync(2, `thread-cpu main=${main.toFixed(2)} other=${other.toFixed(2)}\n`);
});
