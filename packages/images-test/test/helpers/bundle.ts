// Builds the agent bundles with the real packager (scripts/package/package-agent.mjs) once per
// change of its inputs, and keeps them under the cache: packaging ~100 MB of Node per
// architecture is the slow part, and every test file needs the result.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cacheRoot, hashInputs, repoRoot } from './paths.js';

export type Arch = 'amd64' | 'arm64';

export interface Bundles {
  dir: string;
  version: string;
  tarball(arch: Arch): string;
}

const agentDist = join(repoRoot, 'packages', 'cell-agent', 'dist');

export function agentVersion(): string {
  return (JSON.parse(readFileSync(join(repoRoot, 'packages', 'cell-agent', 'package.json'), 'utf8')) as { version: string }).version;
}

export function ensureBundles(): Bundles {
  if (!existsSync(join(agentDist, 'cli.js'))) {
    throw new Error(`${agentDist}/cli.js is missing: build the agent first (npx turbo run build --filter=@cello/cell-agent...)`);
  }
  const key = hashInputs([join(repoRoot, 'scripts', 'package'), agentDist, join(repoRoot, 'packages', 'cell-agent', 'package.json')]);
  const dir = join(cacheRoot, 'images-test', `bundle-${key}`);
  const version = agentVersion();
  if (!existsSync(join(dir, '.complete'))) {
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    execFileSync(process.execPath, [join(repoRoot, 'scripts', 'package', 'package-agent.mjs'), '--arch', 'all', '--out', tmp], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, CELLO_CACHE: cacheRoot },
    });
    execFileSync('touch', [join(tmp, '.complete')]);
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    // Bundles of earlier agent builds are never used again: keep the cache from growing.
    for (const old of readdirSync(join(cacheRoot, 'images-test'))) {
      if (old.startsWith('bundle-') && join(cacheRoot, 'images-test', old) !== dir && !old.includes('.tmp-')) {
        rmSync(join(cacheRoot, 'images-test', old), { recursive: true, force: true });
      }
    }
  }
  return { dir, version, tarball: (arch) => join(dir, `cell-agent-${version}-linux-${arch}.tar.gz`) };
}
