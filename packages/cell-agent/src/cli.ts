#!/usr/bin/env node
// cell-agent: the daemon on every cell (`serve`) and a client for it (`ctl`).
import { existsSync } from 'node:fs';
import { Command } from 'commander';
import { pino } from 'pino';
import { loadRegistryConfig } from '@cello/image-puller';
import type { CellAgentClient } from '@cello/proto/cell';
import { AGENT_VERSION, startAgent } from './agent.js';
import { firstBoot, prepareCellIdentity } from './bootstrap/index.js';
import { GceMetadataClient, ImdsClient, watchInstanceNotices } from './cloud/index.js';
import { registerCtl } from './ctl/ctl.js';
import { createLogger, REDACT_CENSOR, REDACT_PATHS } from './log.js';
import { LineRing, logProcessWarnings } from '@cello/proto';

const program = new Command('cell-agent')
  .version(AGENT_VERSION)
  .description('Cello cell agent: runs one Kubernetes pod on this machine under runc, and serves cello.cell.v1 over mTLS; `first-boot` prepares a cloud instance for it.');

const collect = (v: string, prev: string[]) => [...prev, v];

program
  .command('serve')
  .description('serve the agent API; units survive restarts of the agent and are re-adopted from --state-dir')
  .requiredOption('--listen <host:port>', 'address to serve on, e.g. 0.0.0.0:7443')
  .requiredOption('--state-dir <dir>', 'where the agent keeps the pod, units, volumes, images, logs and runc state (STATE/runc), on disk')
  .option(
    '--run-dir <dir>',
    "per-boot state on a tmpfs: FIFOs, unit instances' control files, pod files (default: /run/cello/agent/ID; created 0700, refused if a symlink or not owned by root)",
  )
  .option('--tls-cert <file>', "the agent's certificate (PEM)")
  .option('--tls-key <file>', "the agent's private key (PEM)")
  .option('--tls-ca <file>', 'CA (PEM) whose signature a client certificate must carry')
  .option('--insecure-dev', 'serve WITHOUT TLS and client authentication: local development only')
  .option(
    '--allow-client <name>',
    "with mTLS, also serve the client identity spiffe://<trust domain>/client/NAME besides the controller (repeatable): give `cell-agent ctl` an operator identity of its own instead of the controller's",
    collect,
    [],
  )
  .option('--insecure-registry <host:port>', 'a registry to reach over plain HTTP (repeatable; shorthand for a --registry-config entry with plainHttp)', collect, [])
  .option('--registry-config <file>', 'per-registry CAs, client certificates, mirrors and rewrites: JSON or YAML with a "registries:" map (docs/registries.md)')
  .option(
    '--ecr-instance-profile <imds-url>',
    "pull ECR images the pod has no credential for with a token from this cell's instance role, read from instance metadata (on EC2: http://169.254.169.254)",
  )
  .option('--ecr-endpoint <url>', "ECR API endpoint for --ecr-instance-profile (default: the region's; tests and ECR-compatible clouds)")
  .option('--image-cache <dir>', 'image blobs and unpacked layers (default: STATE/images); agents on one machine may share one')
  .option('--pod-netns <path>', "network namespace for the pod's units (default: the agent's own, so the pod IP is the cell's)")
  .option('--pod-ip <ip>', "pod IP to report (default: the address in --pod-netns, or the cell's primary IPv4)")
  .option('--cgroup-parent <path>', 'cgroup for the units', '/cello/pod')
  .option('--runc <path>', 'runc binary', 'runc')
  .option('--seccomp-profile-dir <dir>', 'where seccomp Localhost profiles are looked up (default: STATE/seccomp)')
  .option('--pids-limit <n>', 'maximum processes per unit', (v) => Number(v))
  .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (off by default)')
  .option(
    '--stream-listen <host:port|off>',
    'port-forward stream port (PortForwardTicket): TLS like the API, or plain with --insecure-dev; "off": clients use the PortForward gRPC stream (default: the --listen host, a free port)',
  )
  .option('--audit-transcripts', 'keep the bytes of every exec/attach session in the audit log')
  .option('--cell-id <id>', "this cell's id, reported by GetInfo (default: the hostname)")
  // Cell bootstrap (src/bootstrap, docs/aws.md): the certificate is made on the cell, signed by the controller.
  .option('--bootstrap-user-data <file>', "cell user data (cell-bootstrap/v1 JSON): serve only CellBootstrap until the controller installs this cell's certificate, then mTLS")
  .option('--user-data-url <url>', 'like --bootstrap-user-data, read from instance metadata with IMDSv2 (on EC2: http://169.254.169.254)')
  .option(
    '--instance-notices <cloud:url>',
    "watch the instance's metadata for notices of its end and report them to the controller: aws:URL (IMDSv2) or gce:URL (the GCE metadata server); implied by --user-data-url and --gce-metadata-url, written by first-boot",
  )
  .option(
    '--gce-metadata-url <url>',
    'like --user-data-url, on GCE: the "user-data" attribute of the metadata server (http://metadata.google.internal), which is also watched for preemption',
  )
  .addHelpText(
    'after',
    '\nExamples:\n  cell-agent serve --listen 0.0.0.0:7443 --state-dir /var/lib/cello --tls-cert cell.pem --tls-key cell.key --tls-ca ca.pem\n  cell-agent serve --listen 127.0.0.1:7443 --state-dir /tmp/cell --insecure-dev --insecure-registry 127.0.0.1:5000\n  cell-agent serve --listen 0.0.0.0:7443 --state-dir /var/lib/cello --user-data-url http://169.254.169.254   (EC2 cell)\n\nLogs are JSON on stderr (CELLO_LOG_LEVEL=debug for more); secrets are redacted.\n',
  )
  .action(
    async (o: {
      listen: string;
      stateDir: string;
      tlsCert?: string;
      tlsKey?: string;
      tlsCa?: string;
      insecureDev?: boolean;
      insecureRegistry: string[];
      registryConfig?: string;
      ecrInstanceProfile?: string;
      ecrEndpoint?: string;
      imageCache?: string;
      podNetns?: string;
      podIp?: string;
      cgroupParent: string;
      runDir?: string;
      runc: string;
      seccompProfileDir?: string;
      pidsLimit?: number;
      cellId?: string;
      metricsListen?: string;
      streamListen?: string;
      auditTranscripts?: boolean;
      bootstrapUserData?: string;
      userDataUrl?: string;
      gceMetadataUrl?: string;
      instanceNotices?: string;
      allowClient: string[];
    }) => {
      // What AgentLogs streams.
      const ownLogs = new LineRing(2 * 1024 * 1024);
      const logger = createLogger({ destination: ownLogs.tee() });
      // The ECR instance profile loads the AWS SDK, which warns under Node < 22: one JSON line, not raw text.
      logProcessWarnings(logger);
      // Checked before anything starts: a bad --instance-notices is refused, not found later.
      const source = noticeSource(o);
      const sources = [o.bootstrapUserData, o.userDataUrl, o.gceMetadataUrl].filter((x) => x !== undefined);
      if (sources.length > 0) {
        if (sources.length > 1) throw new Error('give one of --bootstrap-user-data, --user-data-url and --gce-metadata-url');
        if (o.tlsCert || o.tlsKey || o.tlsCa || o.insecureDev)
          throw new Error('--bootstrap-user-data/--user-data-url/--gce-metadata-url make the certificate; do not combine them with --tls-* or --insecure-dev');
        const id = await prepareCellIdentity({
          userData: o.bootstrapUserData ? { file: o.bootstrapUserData } : o.userDataUrl ? { imdsUrl: o.userDataUrl } : { gceMetadataUrl: o.gceMetadataUrl! },
          stateDir: o.stateDir,
          listen: o.listen,
          logger,
          // Printed for scripts and tests, like "listening" below.
          onListening: (b) => process.stdout.write(`bootstrap listening ${b.address}\n`),
        });
        Object.assign(o, { tlsCert: id.tls.cert, tlsKey: id.tls.key, tlsCa: id.tls.ca, cellId: o.cellId ?? id.cellId });
      }
      if (o.ecrEndpoint && !o.ecrInstanceProfile) throw new Error('--ecr-endpoint goes with --ecr-instance-profile');
      const anyTls = o.tlsCert || o.tlsKey || o.tlsCa;
      if (anyTls && o.insecureDev) throw new Error('give either --tls-cert/--tls-key/--tls-ca or --insecure-dev, not both');
      if (!anyTls && !o.insecureDev) throw new Error('give --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure-dev for local development');
      if (anyTls && !(o.tlsCert && o.tlsKey && o.tlsCa)) throw new Error('--tls-cert, --tls-key and --tls-ca go together');
      for (const f of [o.tlsCert, o.tlsKey, o.tlsCa]) if (f && !existsSync(f)) throw new Error(`no such file: ${f}`);
      if (o.podNetns && !existsSync(o.podNetns)) throw new Error(`--pod-netns: no such namespace file ${o.podNetns}`);
      const agent = await startAgent({
        listen: o.listen,
        stateDir: o.stateDir,
        ...(o.runDir ? { runDir: o.runDir } : {}),
        tls: anyTls ? { cert: o.tlsCert!, key: o.tlsKey!, ca: o.tlsCa! } : undefined,
        ...(o.allowClient.length > 0 ? { allowedClients: o.allowClient } : {}),
        insecureRegistries: o.insecureRegistry,
        ...(o.registryConfig ? { registries: loadRegistryConfig(o.registryConfig) } : {}),
        ...(o.imageCache ? { imageCacheDir: o.imageCache } : {}),
        ...(o.ecrInstanceProfile ? { ecrInstanceProfile: { imdsUrl: o.ecrInstanceProfile, ...(o.ecrEndpoint ? { endpoint: o.ecrEndpoint } : {}) } } : {}),
        logger,
        ownLogs,
        runcBinary: o.runc,
        cgroupParent: o.cgroupParent,
        ...(o.podNetns ? { podNetns: o.podNetns } : {}),
        ...(o.podIp ? { podIP: o.podIp } : {}),
        ...(o.seccompProfileDir ? { seccompProfileDir: o.seccompProfileDir } : {}),
        ...(o.pidsLimit ? { pidsLimit: o.pidsLimit } : {}),
        ...(o.cellId ? { cellId: o.cellId } : {}),
        ...(o.metricsListen ? { metricsListen: o.metricsListen } : {}),
        ...(o.auditTranscripts ? { auditTranscripts: true } : {}),
        ...(o.streamListen ? { streamListen: o.streamListen === 'off' ? (false as const) : o.streamListen } : {}),
      });
      // Printed for scripts and tests that start the agent on port 0.
      process.stdout.write(`listening ${agent.address}\n`);
      // On a cloud instance, watch its metadata for spot interruption / rebalance / maintenance
      // notices and report them on WatchStatus (src/cloud).
      const notices = source
        ? watchInstanceNotices({
            ...source,
            onNotice: (n) => {
              logger.warn({ kind: n.kind, action: n.action, actionAt: n.actionAt, detail: n.detail }, 'instance notice');
              agent.pod.emit('notice', n);
            },
            onError: (err) => logger.debug({ err: (err as Error).message }, 'instance metadata poll failed'),
          })
        : undefined;
      const stop = (sig: string) => {
        logger.info({ sig }, 'shutting down; units keep running');
        void (notices?.stop() ?? Promise.resolve()).then(() => agent.close()).then(() => process.exit(0));
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    },
  );

/** Where `serve` watches for instance notices: --instance-notices, else the metadata service the bootstrap came from. */
function noticeSource(o: { userDataUrl?: string; gceMetadataUrl?: string; instanceNotices?: string }): { imds: ImdsClient } | { gce: GceMetadataClient } | undefined {
  if (o.instanceNotices) {
    const m = /^(aws|gce):(https?:\/\/.+)$/.exec(o.instanceNotices);
    if (!m) throw new Error(`--instance-notices: expected aws:URL or gce:URL, got "${o.instanceNotices}"`);
    return m[1] === 'aws' ? { imds: new ImdsClient(m[2]!) } : { gce: new GceMetadataClient(m[2]!) };
  }
  if (o.userDataUrl) return { imds: new ImdsClient(o.userDataUrl) };
  if (o.gceMetadataUrl) return { gce: new GceMetadataClient(o.gceMetadataUrl) };
  return undefined;
}

// Run by cello-first-boot.service (images/install.sh), configured by /etc/cello/first-boot.env:
// the settings come from the environment so the unit's EnvironmentFile= is the one place to change them.
program
  .command('first-boot')
  .description("once per instance, before `serve`: read this cell's bootstrap (cell-bootstrap/v1) from the cloud's instance metadata and write the agent's settings")
  .option(
    '--metadata <aws|gce|auto>',
    'where the user data comes from: aws (IMDSv2), gce (the metadata server\'s "user-data" attribute) or auto (by the machine\'s DMI vendor; refuses anything else rather than guess)',
    process.env['CELLO_METADATA'] || 'auto',
  )
  .option('--aws-imds-endpoint <url>', 'IMDSv2 endpoint', process.env['CELLO_AWS_IMDS_ENDPOINT'] || 'http://169.254.169.254')
  .option('--gce-metadata-endpoint <url>', 'GCE metadata server', process.env['CELLO_GCE_METADATA_ENDPOINT'] || 'http://metadata.google.internal')
  .option('--listen-host <host>', 'the address `serve` will listen on (its port comes from the user data)', process.env['CELLO_AGENT_LISTEN_HOST'] || '0.0.0.0')
  .option('--timeout <seconds>', 'how long to wait for the metadata service to answer', (v) => Number(v), Number(process.env['CELLO_METADATA_TIMEOUT_SECONDS'] || 120))
  .option('--state-dir <dir>', 'where the bootstrap files go (DIR/bootstrap)', process.env['CELLO_STATE_DIR'] || '/var/lib/cello')
  .option('--conf-dir <dir>', 'where agent.env goes', process.env['CELLO_CONF_DIR'] || '/etc/cello')
  .addHelpText(
    'after',
    `
Writes STATE/bootstrap/user-data.json (0600: it holds the one-time token), STATE/bootstrap/ca.pem,
CONF/agent.env (CELLO_AGENT_LISTEN, CELLO_CELL_ID, CELLO_CONTROLLER_ID, CELLO_INSTANCE_ID,
CELLO_AGENT_ARGS from the user data's agentConfig) and STATE/bootstrap/done; when done exists it
does nothing (the token is single-use). The user data is checked as \`serve --bootstrap-user-data\`
reads it, and a bad field is named. A metadata service that does not answer yet is retried until
--timeout.

Each option defaults to an environment variable (set in /etc/cello/first-boot.env): CELLO_METADATA,
CELLO_AWS_IMDS_ENDPOINT, CELLO_GCE_METADATA_ENDPOINT, CELLO_AGENT_LISTEN_HOST,
CELLO_METADATA_TIMEOUT_SECONDS, CELLO_STATE_DIR, CELLO_CONF_DIR.

Logs are JSON lines on stdout (the journal); the token is never logged. Exit status 1 on failure.

Examples:
  cell-agent first-boot                       (as cello-first-boot.service runs it)
  cell-agent first-boot --metadata aws --aws-imds-endpoint http://127.0.0.1:8080 --state-dir /tmp/s --conf-dir /tmp/c
`,
  )
  .action(async (o: { metadata: string; awsImdsEndpoint: string; gceMetadataEndpoint: string; listenHost: string; timeout: number; stateDir: string; confDir: string }) => {
    // Its own logger on stdout, named for the unit, so the journal reads like the unit's.
    const logger = pino(
      {
        base: { app: 'cello-first-boot' },
        formatters: { level: (label) => ({ level: label }) },
        timestamp: pino.stdTimeFunctions.isoTime,
        redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR },
      },
      pino.destination({ dest: 1, sync: true }),
    );
    if (!Number.isFinite(o.timeout) || o.timeout < 0) throw new Error('--timeout: expected seconds');
    try {
      await firstBoot({
        metadata: o.metadata,
        awsEndpoint: o.awsImdsEndpoint,
        gceEndpoint: o.gceMetadataEndpoint,
        listenHost: o.listenHost,
        timeoutSeconds: o.timeout,
        stateDir: o.stateDir,
        confDir: o.confDir,
        logger,
      });
    } catch (err) {
      logger.error((err as Error).message);
      process.exit(1);
    }
  });

async function main(): Promise<void> {
  // The stream subcommands (logs, exec, port-forward) live in ctl/streams.ts, owned by the
  // streams module; loaded when present so either side can build without the other.
  let extra: ((ctl: Command, connect: () => CellAgentClient) => void) | undefined;
  const streamsCtl = new URL('./ctl/streams.js', import.meta.url);
  if (existsSync(streamsCtl)) {
    const mod = (await import(streamsCtl.href)) as { registerStreamCommands: (ctl: Command, connect: () => CellAgentClient) => void };
    extra = mod.registerStreamCommands;
  }
  registerCtl(program, extra);
  await program.parseAsync(process.argv);
}

main().catch((err: unknown) => {
  const e = err as { details?: string; message?: string };
  process.stderr.write(`cell-agent: ${e.details ?? e.message ?? String(err)}\n`);
  process.exit(1);
});
