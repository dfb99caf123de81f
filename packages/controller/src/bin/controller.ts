#!/usr/bin/env node
// `controller`: the Cello control plane daemon.
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, loadConfig } from '../config.js';
import { startController } from '../daemon.js';
import { createLogger } from '../obs/logger.js';
import { LineRing, logProcessWarnings } from '@cello/proto';
import { VERSION } from '../version.js';
import { issueUser } from '../api/auth/issue-user.js';
import { formatPreflightTable, preflightConfig, preflightFailed, preflightFile } from '../preflight/index.js';
import { backupFromConfig, restoreFromConfig } from '../support/store-backup.js';

const program = new Command('controller')
  .description(
    'Runs the Cello control plane: stores pods, picks an instance type for each, boots cells\n' +
      '(local cell-agent processes or cloud instances), dispatches pods to their agents and\n' +
      'serves the API that cellctl talks to. Configuration: one YAML file (see README).',
  )
  .version(VERSION)
  .enablePositionalOptions()
  .option('-c, --config <file>', 'configuration file (YAML)')
  .option('--check', 'validate the configuration and exit')
  .option('--skip-preflight', 'start without the preflight checks (`controller preflight`)')
  .option('--terminate-cells-on-exit', 'on SIGINT/SIGTERM, terminate every cell this controller owns (development: `npm start`)')
  .addHelpText(
    'after',
    `
Examples:
  controller -c examples/controller.local.yaml          run with the local provider
  controller -c cello.yaml --check                      validate a configuration
  controller preflight -c cello.yaml                    check the store, cloud permissions and RBAC
  controller issue-user alice --group dev -c cello.yaml -o alice.yaml
                                                        credentials for a second user
  controller backup -c cello.yaml --out cello-backup.json
                                                        the store in one file (secrets stay sealed)
  controller restore -c new.yaml --from cello-backup.json
                                                        into a new, empty store (docs/operations.md)

Endpoints (from the configuration):
  api.listen       gRPC API for cellctl (default 127.0.0.1:7390)
  metrics.listen   Prometheus /metrics and /healthz (default 127.0.0.1:7391)

Cells outlive the controller: a restarted controller finds them again, and its garbage
collector terminates the ones it has no record of (by the controllerId tag).`,
  );

function configOrExit(path: string | undefined) {
  if (!path) {
    process.stderr.write("error: required option '-c, --config <file>' not specified\n");
    process.exit(2);
  }
  try {
    return loadConfig(path);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`invalid configuration:\n${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

function parseTtl(v: string): number {
  const m = /^(\d+)(s|m|h|d)?$/.exec(v);
  if (!m) throw new InvalidArgumentError('expected a duration like 3600s, 12h or 30d');
  return Number(m[1]) * ({ s: 1, m: 60, h: 3600, d: 86400 } as Record<string, number>)[m[2] ?? 's']!;
}

program
  .command('issue-user')
  .description(
    'Issue a client certificate for a user of the controller API (identity spiffe://<trust domain>/user/NAME,\n' +
      'groups in its O= values) and write it as a cellctl configuration (kubeconfig-style).',
  )
  .argument('<name>', 'user name (letters, digits, . _ : @ -)')
  .requiredOption('-c, --config <file>', "the controller's configuration file (to find its store and CA)")
  .requiredOption('-o, --output <file>', 'cellctl configuration to write (an existing one gains a context)')
  .option('-g, --group <group>', 'a group (repeatable); api.policy grants rights to users and groups', (v: string, acc: string[]) => [...acc, v], [] as string[])
  // The default is shown as the duration the flag takes, not the seconds it parses to.
  .addOption(new Option('--ttl <duration>', 'lifetime, e.g. 12h or 30d (at most 365d)').argParser(parseTtl).default(30 * 86400, '30d'))
  .option('--server <host:port>', 'the API address to write (default: api.listen)')
  .option('--context <name>', 'context name (default: the controllerId)')
  .addHelpText('after', '\nThen: cellctl --config FILE get pods')
  .action(async (name: string, o: { config: string; output: string; group: string[]; ttl: number; server?: string; context?: string }) => {
    const config = configOrExit(o.config);
    try {
      const r = await issueUser(
        config,
        { user: name, groups: o.group, ttlSeconds: o.ttl, out: o.output, ...(o.server ? { server: o.server } : {}), ...(o.context ? { context: o.context } : {}) },
        createLogger({ level: 'warn' }),
      );
      process.stdout.write(
        `wrote ${r.file} (context ${r.context}, user ${name}${o.group.length ? `, groups ${o.group.join(', ')}` : ''}); try: cellctl --config ${r.file} get pods\n`,
      );
    } catch (err) {
      process.stderr.write(`controller issue-user: ${(err as Error).message}\n`);
      process.exit(1);
    }
  });

program
  .command('preflight')
  .description(
    'Check what the controller needs before it runs: the configuration, the store, for aws every EC2\n' +
      'action it calls (DryRun) and the subnets, security groups and image it names, for the virtual\n' +
      'node the RBAC it uses (SelfSubjectAccessReview). Prints each check, its result and the fix for a\n' +
      'failure; exits 1 when a check fails. The daemon runs the same checks at start.',
  )
  .requiredOption('-c, --config <file>', "the controller's configuration file")
  .addOption(new Option('-o, --output <format>', 'table or json').choices(['table', 'json']).default('table'))
  .action(async (o: { config: string; output: 'table' | 'json' }) => {
    const results = await preflightFile(o.config, { log: createLogger({ level: 'error' }) });
    process.stdout.write(o.output === 'json' ? `${JSON.stringify(results, null, 2)}\n` : formatPreflightTable(results));
    process.exitCode = preflightFailed(results) ? 1 : 0;
  });

const countsText = (counts: Record<string, number>) =>
  Object.entries(counts)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');

program
  .command('backup')
  .description(
    "Write the controller's store (pods, cells, events, the CA, sealed secrets) to one JSON file.\n" +
      'Runs beside the running controller: etcd is read at one revision, an embedded store from its\n' +
      'files without its lock. Values are copied as stored: the CA key and pod secrets stay sealed\n' +
      'under the encryption key (keep that key apart from the backup; restore needs it).',
  )
  .requiredOption('-c, --config <file>', "the controller's configuration file")
  .requiredOption('--out <file>', 'the backup file to write (0600; an existing file is refused)')
  .option('--allow-unsealed-secrets', 'write secrets that a controller without an encryption key stored unsealed')
  .action(async (o: { config: string; out: string; allowUnsealedSecrets?: boolean }) => {
    const config = configOrExit(o.config);
    try {
      const r = await backupFromConfig(config, o.out, { log: createLogger({ level: 'warn' }), allowUnsealed: !!o.allowUnsealedSecrets });
      process.stdout.write(`wrote ${r.out}: ${r.entries} keys at revision ${r.revision} (${countsText(r.counts)})\n`);
    } catch (err) {
      process.stderr.write(`controller backup: ${(err as Error).message}\n`);
      process.exit(1);
    }
  });

program
  .command('restore')
  .description(
    'Write a backup into an empty store (a new store.dir, or an etcd prefix that holds nothing), with\n' +
      'the controller stopped. The configuration must have the same controllerId and encryption key\n' +
      'as the controller that made the backup; started on it, the controller adopts the running cells.',
  )
  .requiredOption('-c, --config <file>', "the controller's configuration file (names the store to fill)")
  .requiredOption('--from <file>', 'a file written by controller backup')
  .action(async (o: { config: string; from: string }) => {
    const config = configOrExit(o.config);
    try {
      const r = await restoreFromConfig(config, o.from, { log: createLogger({ level: 'warn' }) });
      process.stdout.write(`restored ${r.entries} keys into the ${config.store.kind} store (${countsText(r.counts)}); start the controller to adopt its cells\n`);
    } catch (err) {
      process.stderr.write(`controller restore: ${(err as Error).message}\n`);
      process.exit(1);
    }
  });

program.action(() =>
  main().catch((err: Error) => {
    process.stderr.write(`controller: ${err.message}\n`);
    process.exit(1);
  }),
);

async function main(): Promise<void> {
  const opts = program.opts<{ config?: string; check?: boolean; skipPreflight?: boolean; terminateCellsOnExit?: boolean }>();
  const config = configOrExit(opts.config);
  // Caught here too so --check tells (parseConfig takes such a file: tests and tools read it).
  if (!config.api.insecure && !config.security.encryptionKeyFile && !config.security.encryptionKeyEnv) {
    process.stderr.write(
      `invalid configuration:\n${opts.config}: security.encryptionKeyFile: required for the API's TLS (it seals the controller CA's key); or set api.insecure: true on a loopback address\n`,
    );
    process.exit(2);
  }
  if (opts.check) {
    process.stdout.write(`${opts.config}: ok\n`);
    return;
  }
  // The recent lines `cellctl dump` ships.
  const logRing = new LineRing(4 * 1024 * 1024);
  const log = createLogger({ level: config.log.level, destination: logRing.tee() });
  // Before preflight, which may make the first AWS client (and so its Node version warning).
  logProcessWarnings(log);
  if (opts.skipPreflight) log.warn('preflight skipped (--skip-preflight)');
  else {
    const results = await preflightConfig(config, { log });
    for (const r of results) {
      const entry = { preflight: r.check, result: r.status, detail: r.detail, ...(r.fix ? { fix: r.fix } : {}) };
      if (r.status === 'ok') log.info(entry, 'preflight check passed');
      else if (r.status === 'warn') log.warn(entry, 'preflight check warning');
      else log.error(entry, 'preflight check failed');
    }
    if (preflightFailed(results)) {
      log.fatal(
        { failed: results.filter((r) => r.status === 'fail').map((r) => r.check) },
        'preflight failed; not starting (controller preflight shows the table; --skip-preflight starts anyway)',
      );
      process.exit(1);
    }
  }
  const handle = await startController(config, { log, logRing, onFatal: () => setTimeout(() => process.exit(1), 100) });
  let stopping = false;
  const shutdown = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig }, 'shutting down');
    const timer = setTimeout(() => process.exit(1), 60_000);
    timer.unref();
    try {
      await handle.stop({ terminateCells: !!opts.terminateCellsOnExit });
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
}

await program.parseAsync();
