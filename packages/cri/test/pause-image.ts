// critest's web server images (the sandbox image itself is testkit's pushPause; its busybox and
// nonewprivs come from the conformance build, critest/e2e-images.ts), from the same layers as the
// conformance images: upstream busybox 1.37 built from source (scripts/k8s/build-busybox.sh) and
// real nginx from Debian's package (scripts/k8s/build-nginx.sh). Both are cached builds that
// `node scripts/setup.mjs` runs; a first call here may build them (minutes).
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pushImage, type RegistryServer } from '@cello/testkit';

const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s');
const ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
const layers = new Map<string, Buffer>();

/** The directory a build script prints last, tarred into one reproducible layer (memoized). */
function layer(script: string, ...args: string[]): { blob: Buffer } {
  const key = [script, ...args].join(' ');
  let blob = layers.get(key);
  if (!blob) {
    const path = resolve(SCRIPTS, script);
    const r = spawnSync('bash', [path, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30 * 60_000 });
    if (r.status !== 0) throw new Error(`${path} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
    const dir = r.stdout.trim().split('\n').pop()!;
    blob = execFileSync('tar', ['--format=pax', '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '--mtime=@0', '-C', dir, '-cf', '-', '.'], { maxBuffer: 512 << 20 });
    layers.set(key, blob);
  }
  return { blob };
}

const busybox = () => layer('build-busybox.sh', '--rootfs');

/**
 * critest's nginx (registry.k8s.io/e2e-test-images/nginx:1.14-2): the real nginx on the busybox
 * layer, run as upstream's image runs it — `nginx -g 'daemon off;'`, the master process PID 1 in
 * the foreground (critest's ContainerPID spec looks for `master process` in /proc/1/cmdline),
 * `/var/run/nginx.pid`, its welcome page on port 80, access log on stdout.
 */
export async function pushCritestNginx(reg: RegistryServer, name: string): Promise<string> {
  const config = { Cmd: ['nginx', '-g', 'daemon off;'], Env: ENV, ExposedPorts: { '80/tcp': {} }, StopSignal: 'SIGQUIT' };
  return (await pushImage(reg, name, [busybox(), layer('build-nginx.sh')], config)).ref;
}

/**
 * critest's Apache httpd (registry.k8s.io/e2e-test-images/httpd:2.4.39-4) as far as its specs use
 * it: an HTTP server answering 200 on port 80 — busybox's httpd serving a page that says what it
 * stands for (not Apache: the multi-container spec only fetches the page and reads the log).
 */
export async function pushCritestWebServer(reg: RegistryServer, name: string, server = 'httpd'): Promise<string> {
  // One line on stdout first: critest's multi-container spec looks for the server's name in its log.
  const serve = `echo "${server} (busybox httpd standing in for critest's image)"; mkdir -p /tmp/www && echo "<h1>Welcome to ${server}!</h1>" > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www`;
  return (await pushImage(reg, name, [busybox()], { Entrypoint: ['sh', '-c', serve], Cmd: null, Env: ENV, ExposedPorts: { '80/tcp': {} } })).ref;
}
