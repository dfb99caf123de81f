#!/usr/bin/env node
// `npm run conformance`: the upstream Kubernetes v1.34.4 e2e suite with Cello's virtual node as
// the cluster's only node (packages/controller/test/conformance/conformance.suite.ts assembles
// the cluster and runs e2e.test). Builds what is missing first (npm packages, the Kubernetes
// binaries, e2e.test, the suite's images), then prints a summary of the JUnit report: every spec
// that did not pass with the first line of its failure, and `N passed, N failed, N skipped`
// with the pass rate. Not part of `npm test`.
//   npm run conformance                                  every [Conformance] spec (hours)
//   npm run conformance -- --focus '\[sig-node\].*\[Conformance\]' --timeout 40
//   options: --focus RE  --skip RE  --timeout MINUTES (default 360)  --max-cells N (default 40)
//            --parallel N (default: twice the cores, at most 8)  --report-dir DIR (default conformance-report/<time>)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureKubernetes, ensureNpm, ensureSystem, step } from './setup.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Specs mostly wait (for pods, for the API server), so two ginkgo processes per core keep the
// cores busy; more than 8 only adds cells and API load on a small machine.
export const defaultParallel = (cores = availableParallelism()) => Math.max(1, Math.min(8, 2 * cores));

const HELP = `npm run conformance -- [options]

Runs the upstream Kubernetes v1.34.4 e2e suite (e2e.test) against a local cluster whose only node
is Cello's virtual node: kube-apiserver, kube-controller-manager, kube-scheduler and CoreDNS from
the test harness, every pod on its own local cell. Builds what is missing first (a cold e2e.test
build takes ~20 min on 2 cores; cached under /var/cache/cello). Prints every spec that did not
pass with the first line of its failure, then "N passed, N failed, N skipped" and the pass rate.
The JUnit report, the e2e log and summary.md go to the report directory.

Options:
  --focus RE         specs to run (ginkgo regexp; default '\\[Conformance\\]': every one, hours)
  --skip RE          specs to leave out
  --timeout MIN      stop after this many minutes; specs not reached are counted apart (default 360)
  --max-cells N      cells the controller may run at once (default 40)
  --parallel N       ginkgo processes running specs at once (the ginkgo CLI's --procs; default
                     ${defaultParallel()} here: twice the cores, at most 8). [Serial] specs still run alone,
                     after the others. 1 runs e2e.test by itself, serially
  --report-dir DIR   where the reports go (default conformance-report/<time>)
  --summary-only     summarize the report in --report-dir again, without running anything
  -h, --help         this text

Examples:
  npm run conformance -- --focus '\\[sig-node\\].*\\[Conformance\\]' --timeout 40
  npm run conformance -- --focus 'Downward API' --skip 'Serial'
  npm run conformance -- --summary-only --report-dir conformance-report/2026-12-07T16-00-00-000Z

Failures and their causes so far: docs/conformance.md.
`;

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      focus: { type: 'string', default: '\\[Conformance\\]' },
      skip: { type: 'string' },
      timeout: { type: 'string', default: '360' },
      'max-cells': { type: 'string', default: '40' },
      parallel: { type: 'string', short: 'p', default: String(defaultParallel()) },
      'report-dir': { type: 'string' },
      'summary-only': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n\n${HELP}`);
  process.exit(2);
}
if (opts.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
for (const k of ['timeout', 'max-cells', 'parallel']) {
  if (!/^[1-9][0-9]*$/.test(opts[k])) {
    process.stderr.write(`--${k}: a positive whole number is needed, got '${opts[k]}'\n`);
    process.exit(2);
  }
}
const reportDir = resolve(opts['report-dir'] ?? join(root, 'conformance-report', new Date().toISOString().replace(/[:.]/g, '-')));

function run(cmd, args, o = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...o });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
}

const unescape = (s) =>
  s.replace(/&(lt|gt|quot|apos|amp|#(\d+)|#x([0-9a-fA-F]+));/g, (_, e, d, h) =>
    d ? String.fromCodePoint(Number(d)) : h ? String.fromCodePoint(parseInt(h, 16)) : { lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' }[e],
  );

/**
 * The specs of ginkgo's JUnit report. Specs the focus filtered out are reported as skipped with
 * no message (and are left out here); a spec that skipped itself at run time (e2eskipper) says why.
 */
export function readJunit(file) {
  const xml = readFileSync(file, 'utf8');
  const specs = [];
  for (const m of xml.matchAll(/<testcase\b([^>]*?)(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const attr = (n) => {
      const a = new RegExp(`\\b${n}="([^"]*)"`).exec(m[1]);
      return a ? unescape(a[1]) : '';
    };
    // "[It] [sig-node] Pods should ... [Conformance] [sig-node, NodeConformance, Conformance]": the
    // node type and the trailing label list add nothing to the spec's text.
    const name = attr('name')
      .replace(/^\[It\]\s*/, '')
      .replace(/\s*\[[^\]]*,[^\]]*\]$/, '');
    const status = attr('status');
    const body = m[3] ?? '';
    const msg = /<(failure|error|skipped)\b[^>]*?message="([^"]*)"/.exec(body);
    const message = msg ? unescape(msg[2]) : '';
    if (status === 'skipped' && (!message || message === 'skipped')) continue;
    if (/^\[(SynchronizedBeforeSuite|SynchronizedAfterSuite|BeforeSuite|AfterSuite|ReportAfterSuite|ReportBeforeSuite)\]/.test(name) && status === 'passed') continue;
    specs.push({ name, status, seconds: Number(attr('time')) || 0, message });
  }
  return specs;
}

export function summarize(specs) {
  const passed = specs.filter((s) => s.status === 'passed');
  // Cut short by the run's time budget (--timeout) or ^C: not a verdict on Cello, so outside the rate.
  const interrupted = specs.filter((s) => s.status === 'interrupted' || (s.status === 'skipped' && /interrupt/i.test(s.message)));
  const skipped = specs.filter((s) => (s.status === 'skipped' || s.status === 'pending') && !interrupted.includes(s));
  const failed = specs.filter((s) => !passed.includes(s) && !skipped.includes(s) && !interrupted.includes(s));
  const ran = passed.length + failed.length;
  const rate = ran ? ((100 * passed.length) / ran).toFixed(1) : '0.0';
  const firstLine = (m) =>
    m
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l) ?? '';
  // A pod that did not succeed fails as "expected pod X success"; its container's own message
  // (a StartError, an exec failure) says why, further down in the dumped status.
  const cause = (m) => {
    const container = /(?:terminated|waiting):[\s\S]*?\bmessage: ['"]?([^\n]+)/.exec(m);
    return container ? `${firstLine(m)} — container: ${container[1].replace(/['"]$/, '')}` : firstLine(m);
  };
  const cell = (s) => s.replace(/\|/g, '\\|').slice(0, 300);
  const lines = ['| result | spec | seconds | cause (first line of the failure) |', '|---|---|---|---|'];
  for (const s of [...failed, ...skipped, ...interrupted]) lines.push(`| ${s.status} | ${cell(s.name)} | ${s.seconds.toFixed(0)} | ${cell(cause(s.message))} |`);
  for (const s of passed) lines.push(`| passed | ${cell(s.name)} | ${s.seconds.toFixed(0)} | |`);
  const cut = interrupted.length ? `, ${interrupted.length} not finished (time budget)` : '';
  const total = `${passed.length} passed, ${failed.length} failed, ${skipped.length} skipped${cut}; pass rate ${rate}% (${passed.length} of ${ran} run)`;
  return { table: lines.join('\n'), total, passed: passed.length, failed: failed.length, skipped: skipped.length, interrupted: interrupted.length };
}

function main() {
  if (!opts['summary-only']) {
    step('setup: npm packages', ensureNpm);
    step('setup: system packages', () => {
      if (process.env.CELLO_SKIP_SYSTEM_SETUP !== '1') ensureSystem();
    });
    step('setup: Kubernetes binaries (scripts/k8s)', () => {
      if (process.env.CELLO_SKIP_SYSTEM_SETUP !== '1') ensureKubernetes();
    });
    step('build: e2e.test, agnhost and ginkgo (scripts/k8s/build-e2e.sh)', () => run('bash', ['scripts/k8s/build-e2e.sh']));
    step('build: the suite images (scripts/k8s/build-e2e-images.sh)', () => run('bash', ['scripts/k8s/build-e2e-images.sh']));
    step('build: packages', () =>
      run(join(root, 'node_modules', '.bin', 'turbo'), ['run', 'build', '--filter=@cello/controller...'], { env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1' } }),
    );
    mkdirSync(reportDir, { recursive: true });
    step(`run: e2e.test, ${opts.parallel} process(es), focus '${opts.focus}'${opts.skip ? `, skip '${opts.skip}'` : ''} (report: ${reportDir})`, () => {
      // The vitest status says only whether the cluster came up and the suite wrote its report.
      const r = spawnSync(join(root, 'node_modules', '.bin', 'vitest'), ['run', '-c', 'vitest.conformance.config.ts'], {
        stdio: 'inherit',
        cwd: join(root, 'packages', 'controller'),
        env: {
          ...process.env,
          CONFORMANCE_DIR: reportDir,
          CONFORMANCE_FOCUS: opts.focus,
          ...(opts.skip ? { CONFORMANCE_SKIP: opts.skip } : {}),
          CONFORMANCE_TIMEOUT_MINUTES: opts.timeout,
          CONFORMANCE_MAX_CELLS: opts['max-cells'],
          CONFORMANCE_PROCS: opts.parallel,
        },
      });
      if (r.status !== 0) process.stderr.write(`vitest exited ${r.status}\n`);
    });
  }
  const junit = join(reportDir, 'junit.xml');
  if (!existsSync(junit)) throw new Error(`no JUnit report at ${junit}: the cluster or e2e.test did not come up (see the output above and ${join(reportDir, 'e2e.log')})`);
  const s = summarize(readJunit(junit));
  const md = `# Conformance run\n\n${opts['summary-only'] ? '' : `${opts.parallel} ginkgo process(es), `}focus \`${opts.focus}\`${opts.skip ? `, skip \`${opts.skip}\`` : ''}\n\n${s.table}\n\n**${s.total}**\n`;
  writeFileSync(join(reportDir, 'summary.md'), md);
  process.stdout.write(`\n${s.table}\n\nJUnit: ${junit}\nsummary: ${join(reportDir, 'summary.md')}\n${s.total}\n`);
  return s.failed === 0 && s.passed > 0 ? 0 : 1;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    process.exit(main());
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
}
