#!/usr/bin/env node
// `npm test`: set up what is missing, build through turbo, lint (tsc, ESLint, Prettier), run
// every package's tests, and print one closing line summing all the test runners' results.
// A lint failure fails the run, but the tests still run so that one report says everything.
//   npm test                       everything
//   npm test -- --filter=@cello/proto   one package (any turbo flag passes through)
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureKubernetes, ensureNpm, ensureSystem, step } from './setup.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const extra = process.argv.slice(2);

function turbo(args) {
  const bin = join(root, 'node_modules', '.bin', 'turbo');
  const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', DO_NOT_TRACK: '1', FORCE_COLOR: process.env.FORCE_COLOR ?? '0' };
  const r = spawnSync(bin, [...args, '--concurrency=1', '--log-order=grouped', ...extra], { stdio: 'inherit', cwd: root, env });
  return r.status ?? 1;
}

function packages() {
  return readdirSync(join(root, 'packages')).map((p) => join(root, 'packages', p));
}

try {
  step('setup: npm packages', ensureNpm);
  step('setup: system packages', () => {
    if (process.env.CELLO_SKIP_SYSTEM_SETUP === '1') return;
    ensureSystem();
  });
  // Before the tests, not inside them: one build, with its output on the console, instead of a
  // test hook that waits silently on the first file that needs the binaries.
  step('setup: Kubernetes binaries and CRI tools (scripts/k8s)', () => {
    if (process.env.CELLO_SKIP_SYSTEM_SETUP === '1') return;
    ensureKubernetes();
  });
} catch (err) {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}

for (const p of packages()) rmSync(join(p, '.test-results'), { recursive: true, force: true });

let status = 0;
step('build', () => {
  status = turbo(['run', 'build']);
});
// Lint: every package's tsc (through turbo, cached), then ESLint and Prettier over the tree.
let lintStatus = 0;
if (status === 0) {
  step('lint', () => {
    const tsc = turbo(['run', 'lint', '--continue']);
    const code = spawnSync('npm', ['run', '--silent', 'lint:code'], { stdio: 'inherit', cwd: root }).status ?? 1;
    lintStatus = tsc || code;
  });
}
if (status === 0) {
  step('test', () => {
    status = turbo(['run', 'test', '--continue']);
  });
}

// One closing line over every package's vitest JSON report.
let passed = 0;
let failed = 0;
let skipped = 0;
const filtered = extra.some((a) => a.startsWith('--filter'));
for (const p of packages()) {
  const report = join(p, '.test-results', 'vitest.json');
  if (!existsSync(report)) {
    // A package with tests and no report did not run them: turbo stopped early (it was
    // interrupted, and then it may still exit 0). Never let that pass as green.
    const hasTests = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8')).scripts?.test;
    if (hasTests && !filtered) {
      process.stderr.write(`${p.slice(root.length + 1)}: no test report; its tests did not run\n`);
      failed += 1;
    }
    continue;
  }
  const r = JSON.parse(readFileSync(report, 'utf8'));
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // A suite that failed to load has no failed tests of its own; count it once.
  if (!r.success && (r.numFailedTests ?? 0) === 0) failed += Math.max(1, r.numFailedTestSuites ?? 0);
}
if (status !== 0 && failed === 0) failed = 1;
if (lintStatus !== 0) {
  process.stderr.write('\nlint failed (see above): `npm run format` fixes formatting and what ESLint can fix; the rest needs a hand.\n');
  failed += 1;
}
process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exit(status === 0 && lintStatus === 0 && failed === 0 ? 0 : 1);
