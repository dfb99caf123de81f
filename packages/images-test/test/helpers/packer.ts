// Packer and its amazon / googlecompute plugins, built from the Go module proxy (the only
// source of them on these machines: no Debian package, no GitHub downloads) and cached under
// /var/cache/cello/packer. `go install pkg@version` cannot be used: it asks the proxy for the
// module's version list, which the proxy refuses for Packer, so each module is fetched with
// `go mod download` and built in place with its own go.mod and go.sum.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { cacheRoot } from './paths.js';

export const PACKER = { module: 'github.com/hashicorp/packer', version: 'v1.11.2' };
export const PLUGINS = [
  { name: 'amazon', source: 'github.com/hashicorp/amazon', module: 'github.com/hashicorp/packer-plugin-amazon', version: 'v1.2.1' },
  { name: 'googlecompute', source: 'github.com/hashicorp/googlecompute', module: 'github.com/hashicorp/packer-plugin-googlecompute', version: 'v1.1.6' },
] as const;

const root = join(cacheRoot, 'packer');
const goEnv = () => ({
  ...process.env,
  GOMODCACHE: join(cacheRoot, 'go', 'mod'),
  GOCACHE: join(cacheRoot, 'go', 'build'),
  GOFLAGS: '-modcacherw',
});

function requireGo(): void {
  const r = spawnSync('go', ['env', 'GOVERSION'], { encoding: 'utf8' });
  const m = /^go1\.(\d+)/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m || Number(m[1]) < 21) {
    throw new Error(
      `Go >= 1.21 is needed to build Packer ${PACKER.version} from the Go module proxy (found: ${r.status === 0 ? r.stdout.trim() : 'no go on the PATH'}). ` +
        "Debian 12's golang-go is 1.19: use golang-1.21-go or newer from bookworm-backports, or the toolchain in /usr/local/go.",
    );
  }
}

function build(module: string, version: string, out: string): string {
  if (existsSync(out)) return out;
  requireGo();
  const info = JSON.parse(execFileSync('go', ['mod', 'download', '-json', `${module}@${version}`], { env: goEnv(), encoding: 'utf8', timeout: 600_000 })) as {
    Dir?: string;
    Error?: string;
  };
  if (!info.Dir) throw new Error(`go mod download ${module}@${version}: ${info.Error ?? 'no directory'}`);
  mkdirSync(join(out, '..'), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  // Minutes of compiling on a cold cache: the first run pays it once per machine.
  execFileSync('go', ['build', '-trimpath', '-o', tmp, '.'], { cwd: info.Dir, env: goEnv(), stdio: ['ignore', 'ignore', 'inherit'], timeout: 3_600_000 });
  renameSync(tmp, out);
  return out;
}

export interface Packer {
  bin: string;
  /** Environment for running packer: cached plugins, no calls home, HOME of its own. */
  env: NodeJS.ProcessEnv;
}

export function ensurePacker(): Packer {
  const bin = build(PACKER.module, PACKER.version, join(root, PACKER.version, 'bin', 'packer'));
  const pluginPath = join(root, 'plugins');
  const home = join(root, 'home');
  mkdirSync(home, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: home,
    PACKER_PLUGIN_PATH: pluginPath,
    CHECKPOINT_DISABLE: '1',
    PACKER_NO_TELEMETRY: '1',
  };
  const installed = () => execFileSync(bin, ['plugins', 'installed'], { env, encoding: 'utf8' });
  for (const p of PLUGINS) {
    const binary = build(p.module, p.version, join(root, 'plugin-builds', `packer-plugin-${p.name}_${p.version}`));
    if (!installed().includes(`packer-plugin-${p.name}_${p.version}_`)) {
      execFileSync(bin, ['plugins', 'install', '--path', binary, p.source], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    }
  }
  return { bin, env };
}
