#!/usr/bin/env node
// `controller`: the Cello control plane daemon.
import { Command } from 'commander';
import { ConfigError, loadConfig } from '../config.js';
import { startController } from '../daemon.js';
import { createLogger } from '../obs/logger.js';
import { VERSION } from '../version.js';

const program = new Command('controller')
  .description(
    'Runs the Cello control plane: stores pods, picks an instance type for each, boots cells\n' +
      '(local cell-agent processes or cloud instances), dispatches pods to their agents and\n' +
      'serves the API that cellctl talks to. Configuration: one YAML file (see README).',
  )
  .version(VERSION)
  .requiredOption('-c, --config <file>', 'configuration file (YAML)')
  .option('--check', 'validate the configuration and exit')
  .option('--terminate-cells-on-exit', 'on SIGINT/SIGTERM, terminate every cell this controller owns (development: `npm start`)')
  .addHelpText(
    'after',
    `
Examples:
  controller -c examples/controller.local.yaml          run with the local provider
  controller -c cello.yaml --check                      validate a configuration

Endpoints (from the configuration):
  api.listen       gRPC API for cellctl (default 127.0.0.1:7390)
  metrics.listen   Prometheus /metrics and /healthz (default 127.0.0.1:7391)

Cells outlive the controller: a restarted controller finds them again, and its garbage
collector terminates the ones it has no record of (by the controllerId tag).`,
  );

program.parse();
const opts = program.opts<{ config: string; check?: boolean; terminateCellsOnExit?: boolean }>();

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(opts.config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`invalid configuration:\n${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (opts.check) {
    process.stdout.write(`${opts.config}: ok\n`);
    return;
  }
  const log = createLogger({ level: config.log.level });
  const handle = await startController(config, { log, onFatal: () => setTimeout(() => process.exit(1), 100) });
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

main().catch((err: Error) => {
  process.stderr.write(`controller: ${err.message}\n`);
  process.exit(1);
});
