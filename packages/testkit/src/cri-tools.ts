import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const BUILD_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s', 'build-cri-tools.sh');

export interface CriTools {
  crictl: string;
  critest: string;
}

/**
 * crictl and critest v1.34.0 (sigs.k8s.io/cri-tools), built from the Go module proxy by
 * scripts/k8s/build-cri-tools.sh on first use (a few minutes on 2 cores; cached afterwards, and
 * built once under a lock when several test files ask at once). Call it from a hook with a
 * generous timeout. Fails with the build's own error, never skips.
 */
export function criTools(): CriTools {
  const r = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024, timeout: 30 * 60_000 });
  if (r.status !== 0) throw new Error(`${BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  const dir = r.stdout.trim().split('\n').pop()!;
  const tools = { crictl: join(dir, 'crictl'), critest: join(dir, 'critest') };
  for (const p of Object.values(tools)) if (!existsSync(p)) throw new Error(`${BUILD_SCRIPT} printed ${dir} but ${p} is not there`);
  return tools;
}
