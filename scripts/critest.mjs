#!/usr/bin/env node
// `npm run critest`: the whole critest v1.34.0 suite (the CRI validation suite Kubernetes runs
// against containerd and CRI-O) against cello-cri backed by a real controller and real cells
// (packages/cri/test/critest/critest.suite.ts assembles them and runs critest). Builds what is
// missing first, then prints every spec that did not pass with its reason — the specs that cannot
// apply to a VM per pod (packages/cri/test/critest/not-applicable.ts) with theirs — and
// `N passed, N failed, N skipped` with the pass rate of the specs that apply. Not part of `npm test`.
//   npm run critest                          every spec (~30 min on 2 cores)
//   npm run critest -- --focus Streaming     options: --focus RE  --skip RE  --timeout MIN  --report-dir DIR  --summary-only
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureKubernetes, ensureNpm, ensureSystem, step } from './setup.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const HELP = `npm run critest -- [options]

Runs critest v1.34.0, unmodified, against cello-cri: a real controller (local provider: real cell
agents, real runc), a local registry seeded with the images critest pulls, the shim in between.
Specs that cannot apply to a VM per pod are skipped, each with its reason
(packages/cri/test/critest/not-applicable.ts). Prints every spec that did not pass with its reason,
then "N passed, N failed, N skipped" and the pass rate of the specs that ran. The JSON report,
critest's output and the shim's log go to the report directory.

Options:
  --focus RE         specs to run (ginkgo regexp; default: all)
  --skip RE          more specs to leave out (not counted)
  --timeout MIN      critest's own time budget in minutes (default 90)
  --report-dir DIR   where the reports go (default critest-report/<time>)
  --summary-only     summarize the report in --report-dir again, without running anything
  -h, --help         this text
`;

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      focus: { type: 'string' },
      skip: { type: 'string' },
      timeout: { type: 'string', default: '90' },
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
if (!/^[1-9][0-9]*$/.test(opts.timeout)) {
  process.stderr.write(`--timeout: a positive whole number of minutes is needed, got '${opts.timeout}'\n`);
  process.exit(2);
}
const reportDir = resolve(opts['report-dir'] ?? join(root, 'critest-report', new Date().toISOString().replace(/[:.]/g, '-')));

function run(cmd, args, o = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...o });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
}

/** The not-applicable specs and their reasons, as the suite wrote them beside its report (from packages/cri/test/critest/not-applicable.ts). */
function notApplicable() {
  const file = join(reportDir, 'not-applicable.json');
  return new Map(existsSync(file) ? Object.entries(JSON.parse(readFileSync(file, 'utf8'))) : []);
}

/** ginkgo's JSON report: the It specs with their state and first failure line. */
export function summarize(reportFile, reasons) {
  const specs = JSON.parse(readFileSync(reportFile, 'utf8'))[0].SpecReports.filter((s) => s.LeafNodeType === 'It');
  const firstLine = (m) =>
    (m ?? '')
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l) ?? '';
  const rows = [];
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  let filtered = 0;
  for (const s of specs) {
    const name = s.LeafNodeText;
    if (s.State === 'passed') {
      passed++;
      continue;
    }
    if (s.State === 'skipped' || s.State === 'pending') {
      const why = reasons.get(name) ?? (s.Failure ? firstLine(s.Failure.Message) : '');
      // Specs the focus or --skip left out say nothing: not part of this run.
      if (!why) {
        filtered++;
        continue;
      }
      skipped++;
      rows.push(`skipped  ${name}\n         ${why}`);
      continue;
    }
    failed++;
    rows.push(`${s.State.padEnd(8)} ${name}\n         ${firstLine(s.Failure?.Message).slice(0, 400)}`);
  }
  const ran = passed + failed;
  const rate = ran ? ((100 * passed) / ran).toFixed(1) : '0.0';
  const total = `${passed} passed, ${failed} failed, ${skipped} skipped; ${rate}% of the ${ran} specs that apply pass${filtered ? ` (${filtered} outside the focus)` : ''}`;
  return { rows, total, passed, failed, skipped };
}

function main() {
  if (!opts['summary-only']) {
    step('setup: npm packages', ensureNpm);
    step('setup: system packages', () => {
      if (process.env.CELLO_SKIP_SYSTEM_SETUP !== '1') ensureSystem();
    });
    step('setup: Kubernetes binaries and CRI tools (scripts/k8s)', () => {
      if (process.env.CELLO_SKIP_SYSTEM_SETUP !== '1') ensureKubernetes();
    });
    step('build: packages', () =>
      run(join(root, 'node_modules', '.bin', 'turbo'), ['run', 'build', '--filter=@cello/cri...'], { env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1' } }),
    );
    mkdirSync(reportDir, { recursive: true });
    step(`run: critest${opts.focus ? ` --ginkgo.focus='${opts.focus}'` : ''} (report: ${reportDir})`, () => {
      // The vitest status says only whether the stack came up and critest wrote its report.
      const r = spawnSync(join(root, 'node_modules', '.bin', 'vitest'), ['run', '-c', 'vitest.critest.config.ts'], {
        stdio: 'inherit',
        cwd: join(root, 'packages', 'cri'),
        env: {
          ...process.env,
          CRITEST_DIR: reportDir,
          CRITEST_TIMEOUT_MINUTES: opts.timeout,
          ...(opts.focus ? { CRITEST_FOCUS: opts.focus } : {}),
          ...(opts.skip ? { CRITEST_SKIP: opts.skip } : {}),
        },
      });
      if (r.status !== 0) process.stderr.write(`vitest exited ${r.status}\n`);
    });
  }
  const report = join(reportDir, 'critest.json');
  if (!existsSync(report)) throw new Error(`no report at ${report}: the stack or critest did not come up (see the output above and ${join(reportDir, 'critest.log')})`);
  const s = summarize(report, notApplicable());
  const text = `${s.rows.join('\n')}\n\n${s.total}\n`;
  writeFileSync(join(reportDir, 'summary.txt'), text);
  process.stdout.write(`\n${text}report: ${report}\nsummary: ${join(reportDir, 'summary.txt')}\n`);
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
