#!/usr/bin/env node
// `npm start`: Cello on this machine, from a fresh clone.
//   1. installs what is missing (npm packages, Debian packages) and builds what is not built;
//   2. starts a local OCI registry on 127.0.0.1:5000 seeded with the example images, built by
//      the project's fixture scripts (the examples pull from it, so no internet is needed);
//   3. starts the controller with the local provider (each cell a cell-agent process, with its
//      own network namespace when run as root) and a warm pool of ready cells;
//   4. applies examples/*.yaml and shows the pods reach Running / Succeeded;
//   5. prints the next commands to try, and runs until Ctrl-C, which deletes the pods, ends
//      every cell and leaves no process, mount, namespace or cell behind.
// State lives in .cello/ (gitignored). Options: --no-examples, --warm N, --keep-store,
// --smoke (CI: once the examples run, try logs, exec and port-forward, then stop; the exit code
// says whether all of it worked and nothing was left behind).
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, openSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureNpm, ensureSystem } from './setup.mjs';
import { writeControllerConfig, writeRegistryConfig } from './start/config.mjs';
import { cellsInLog, leftovers } from './start/leftovers.mjs';
import { smoke } from './start/smoke.mjs';
import { httpStatus, until } from './start/wait.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const state = join(root, '.cello');
let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'no-examples': { type: 'boolean', default: false },
      warm: { type: 'string', default: '2' },
      'keep-store': { type: 'boolean', default: false },
      smoke: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  process.stderr.write(`npm start: ${err.message}; see npm start -- --help\n`);
  process.exit(2);
}
const REGISTRY = '127.0.0.1:5000';
const API = process.env.CELLO_CONTROLLER ?? '127.0.0.1:7390';
const WARM = Number(args.warm);
if (!Number.isInteger(WARM) || WARM < 0) {
  process.stderr.write(`npm start: --warm ${args.warm}: give a whole number of warm cells (0 or more)\n`);
  process.exit(2);
}
const cellsRoot = join(state, 'cells');
const CONTROLLER_ID = 'local-dev';
// The controller writes the local user's credentials (group system:masters) here at start, as
// kind does for its cluster: cellctl finds them with no flag, and a call without them is refused.
const CELLCTL_CONFIG = process.env.CELLO_CONFIG || join(homedir(), '.cello', 'config');

const say = (m) => process.stdout.write(`\x1b[1m==>\x1b[0m ${m}\n`);
const note = (m) => process.stdout.write(`    ${m}\n`);

if (args.help) {
  // The header comment, whole: it is the documentation.
  const lines = readFileSync(fileURLToPath(import.meta.url), 'utf8')
    .split('\n')
    .slice(1);
  const header = lines.slice(
    0,
    lines.findIndex((l) => !l.startsWith('//')),
  );
  process.stdout.write(header.map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
  process.exit(0);
}

const children = [];
let shuttingDown = false;

function run(cmd, argv, o = {}) {
  const r = spawnSync(cmd, argv, { stdio: 'inherit', cwd: root, ...o });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed (exit ${r.status})`);
}

/** cellctl's command line to this controller: with the local user's credentials, or none at all. */
function cellctlArgv({ anonymous = false } = {}) {
  const bin = join(root, 'packages/controller/dist/bin/cellctl.js');
  return anonymous ? [bin, '--insecure', '--server', API] : [bin, '--config', CELLCTL_CONFIG, '--server', API];
}

function cellctl(argv, o = {}) {
  return spawnSync(process.execPath, [...cellctlArgv(), ...argv], { encoding: 'utf8', ...o });
}

// ---------------------------------------------------------------- 1. install and build
say('checking npm and system packages');
ensureNpm();
ensureSystem();
const built = ['packages/controller/dist/bin/controller.js', 'packages/cell-agent/dist/cli.js', 'packages/testkit/dist/index.js'].every((p) => existsSync(join(root, p)));
say(built ? 'build is present (turbo rebuilds only what changed)' : 'building');
run(
  join(root, 'node_modules/.bin/turbo'),
  ['run', 'build', '--filter=@cello/controller...', '--filter=@cello/cell-agent...', '--filter=@cello/testkit', '--output-logs=errors-only'],
  {
    env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1' },
  },
);
mkdirSync(state, { recursive: true });

const testkit = await import(pathToFileURL(join(root, 'packages/testkit/dist/index.js')).href);
// Installed by ensureNpm above, so imported only now (a fresh clone has no node_modules yet).
const { default: yaml } = await import('yaml');
const { LocalProvider } = await import(pathToFileURL(join(root, 'packages/controller/dist/index.js')).href);

let registry;
let controller;
let provider;
let controllerExited = false;
/** Cells an earlier run left, ended at this start: their namespaces are checked at stop too. */
let staleCells = [];
// ---------------------------------------------------------------- shutdown
async function shutdown(code = 0) {
  if (shuttingDown) return;
  shuttingDown = true;
  process.stdout.write('\n');
  say('stopping: deleting pods, ending cells');
  if (controller && !controllerExited) {
    const pods = cellctl(['get', 'pods', '-o', 'json'], { timeout: 10_000 });
    try {
      const data = JSON.parse(pods.stdout || '{}');
      const names = (data.items ?? (data.metadata ? [data] : [])).map((p) => p.metadata.name);
      if (names.length) cellctl(['delete', 'pod', ...names, '--grace', '2'], { timeout: 60_000, stdio: 'inherit' });
    } catch {
      /* the controller is gone; the provider cleanup below still ends every cell */
    }
    const exited = new Promise((r) => controller.once('exit', r));
    controller.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
    if (!controllerExited) controller.kill('SIGKILL');
  }
  if (provider) {
    const left = await provider.listOwned(CONTROLLER_ID);
    if (left.length) await provider.terminate(left.map((i) => i.instanceId));
  }
  if (registry && registry.exitCode === null) registry.kill('SIGTERM');
  if (!args['keep-store']) rmSync(join(state, 'store'), { recursive: true, force: true });
  const ours = new Set([...cellsInLog(join(state, 'controller.log')), ...staleCells].map((id) => LocalProvider.netnsOf(id)));
  const left = leftovers(cellsRoot, ours);
  say(left.length ? `left behind: ${left.join(', ')}` : 'stopped; no process, mount, namespace or cell left behind');
  process.exit(code || (args.smoke && left.length ? 1 : 0));
}
process.on('SIGINT', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
process.on('uncaughtException', (err) => {
  process.stderr.write(`npm start: ${err.message}\n`);
  void shutdown(1);
});

async function main() {
  // ---------------------------------------------------------------- 2. registry with the example images
  say(`starting a local registry on ${REGISTRY}`);
  if ((await httpStatus(`http://${REGISTRY}/v2/`)) !== 0) {
    throw new Error(`${REGISTRY} is already in use; stop whatever listens there (the examples pull from it)`);
  }
  const regDir = join(state, 'registry');
  mkdirSync(regDir, { recursive: true });
  writeRegistryConfig(yaml, join(regDir, 'registry.yml'), { addr: REGISTRY, dataDir: join(regDir, 'data') });
  registry = spawn('docker-registry', ['serve', join(regDir, 'registry.yml')], { stdio: ['ignore', 'ignore', openSync(join(state, 'registry.log'), 'w')], detached: false });
  children.push(registry);
  await until('the registry', async () => (await httpStatus(`http://${REGISTRY}/v2/`)) === 200, 15_000);
  const fixtures = await testkit.buildFixtures('busybox');
  await testkit.pushLayoutTag({ host: REGISTRY }, fixtures.layout, 'busybox', 'busybox:latest');
  note(`pushed ${REGISTRY}/busybox:latest (built by scripts/fixtures/build.mjs)`);

  // ---------------------------------------------------------------- 3. controller
  const keyFile = join(state, 'ca-encryption.key');
  if (!existsSync(keyFile)) writeFileSync(keyFile, randomBytes(32).toString('base64'), { mode: 0o600 });
  if (!args['keep-store']) rmSync(join(state, 'store'), { recursive: true, force: true });
  const configPath = join(state, 'controller.yaml');
  writeControllerConfig(yaml, configPath, {
    controllerId: CONTROLLER_ID,
    api: API,
    cellctlConfig: CELLCTL_CONFIG,
    storeDir: join(state, 'store'),
    cellsRoot,
    registry: REGISTRY,
    keyFile,
    warm: WARM,
  });
  // Cells a previous run left (it was killed -9): end them before starting afresh.
  provider = new LocalProvider({ root: cellsRoot });
  const stale = await provider.listOwned(CONTROLLER_ID);
  staleCells = stale.map((i) => i.tags['cello.io/cell-id'] ?? i.instanceId);
  if (stale.length) {
    say(`ending ${stale.length} cell(s) left by an earlier run`);
    await provider.terminate(stale.map((i) => i.instanceId));
  }
  say(`starting the controller on ${API} (log: .cello/controller.log)`);
  const controllerLog = openSync(join(state, 'controller.log'), 'w');
  controller = spawn(process.execPath, [join(root, 'packages/controller/dist/bin/controller.js'), '-c', configPath, '--terminate-cells-on-exit'], {
    stdio: ['ignore', controllerLog, controllerLog],
    detached: true, // Ctrl-C reaches it through us, in order
  });
  children.push(controller);
  controller.on('exit', (code) => {
    controllerExited = true;
    if (!shuttingDown) {
      process.stderr.write(`controller exited (${code}); see .cello/controller.log\n`);
      void shutdown(1);
    }
  });
  await until('the controller API', async () => cellctl(['version']).status === 0, 30_000);
  note(cellctl(['version']).stdout.trim().split('\n').pop());

  // ---------------------------------------------------------------- 4. examples
  if (!args['no-examples']) {
    await until(
      `${WARM} warm cells`,
      async () => {
        const r = cellctl(['get', 'cells', '-o', 'json']);
        if (r.status !== 0) return false;
        const d = JSON.parse(r.stdout);
        const cells = d.items ?? [d];
        return cells.filter((c) => c.state === 'CELL_STATE_READY').length >= Math.min(WARM, 1);
      },
      120_000,
    );
    say('applying examples/');
    const applied = cellctl(['apply', '-f', join(root, 'examples')], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (applied.status !== 0) throw new Error('cellctl apply failed');
    const t0 = Date.now();
    const want = { 'hello-job': ['Succeeded', 'Completed'], web: ['Running'], 'init-shared': ['Running'] };
    let last = '';
    await until(
      'the examples to run',
      async () => {
        const r = cellctl(['get', 'pods', '-o', 'json']);
        if (r.status !== 0) return false;
        const d = JSON.parse(r.stdout);
        const pods = d.items ?? [d];
        const table = cellctl(['get', 'pods', '-o', 'wide']).stdout;
        if (table !== last) {
          process.stdout.write(`\n${table}`);
          last = table;
        }
        return Object.entries(want).every(([name]) => {
          const p = pods.find((x) => x.metadata?.name === name);
          if (!p) return false;
          const phase = p.status?.phase;
          if (name === 'hello-job') return phase === 'Succeeded';
          return phase === 'Running' && (p.status?.containerStatuses ?? []).every((c) => c.ready);
        });
      },
      180_000,
    );
    say(`all examples reached Running/Succeeded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }

  const cellctlPath = 'node packages/controller/dist/bin/cellctl.js';
  process.stdout.write(`
Cello is running (controller ${API}, registry ${REGISTRY}, cells in .cello/cells).
Your credentials (context ${CONTROLLER_ID}, group system:masters) are in ${CELLCTL_CONFIG}.
Try, in another terminal (alias cellctl="${cellctlPath}"):

  cellctl get pods -o wide                 pods, their cells and instance types
  cellctl get cells -o wide                cells: state, instance, address, price
  cellctl describe pod web                 conditions and events
  cellctl logs hello-job                   the finished job's output
  cellctl exec init-shared -- cat /data/motd
  cellctl exec -it web -- sh               an interactive shell in the web pod
  cellctl port-forward web 8080:8080       then: curl http://127.0.0.1:8080/
  cellctl apply -f examples/web.yaml       (edit and re-apply)
  cellctl delete pod web                   stops it gracefully, then its cell goes
  curl -s 127.0.0.1:7391/metrics | grep cello_
  node packages/controller/dist/bin/controller.js issue-user alice --group dev -c .cello/controller.yaml -o alice.yaml
                                           a second user (rights: api.policy), then cellctl --config alice.yaml get pods

Press Ctrl-C to stop everything.
`);
  if (args.smoke) {
    await smoke({ cellctl, cellctlArgv, freePort: testkit.freePort, note });
    return shutdown(0);
  }
  await new Promise(() => undefined);
}

main().catch((err) => {
  process.stderr.write(`npm start: ${err.message}\n`);
  void shutdown(1);
});
