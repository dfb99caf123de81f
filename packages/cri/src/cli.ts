#!/usr/bin/env node
// cello-cri: the CRI shim a real kubelet talks to (--container-runtime-endpoint).
import { Command } from 'commander';
import { pino } from 'pino';
import { loadRegistryConfig, parsePlatform, withShorthands, type RegistryConfig } from '@cello/image-puller';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';
import { parseIdleTimeout } from '@cello/controller/streaming';
import { DEFAULT_SANDBOX_IMAGE, DEFAULT_STREAMING_LISTEN, startCriServer } from './server.js';
import { CRI_VERSION } from './version.js';
import { DEFAULT_PODS_ROOT } from './pods/kubelet-mounts.js';

const collect = (v: string, prev: string[]) => [...prev, v];

const program = new Command('cello-cri')
  .version(CRI_VERSION)
  .description(
    [
      'Cello CRI shim: a Kubernetes Container Runtime Interface (runtime.v1) server on a unix socket, so an',
      'ordinary kubelet can run pods on cells (one cloud instance per pod) instead of on its own node.',
      '',
      "What works today: the ImageService. PullImage resolves an image's manifest and config from its",
      'registry (with the credentials the kubelet passes, sent to that registry only) and records it;',
      'the layers are pulled later by the cell that runs the pod, so nothing big lands on this node.',
      'ListImages, ImageStatus, RemoveImage and ImageFsInfo answer from those records.',
      '',
      'With --controller-config, pod sandboxes and containers run on cells: RunPodSandbox applies a',
      "Cello pod through the controller API (authenticated as the configuration's user, like cellctl),",
      'its cell is the sandbox, and each started container is a unit of that pod. What a VM per pod',
      "cannot mean (host namespaces, node mounts, privileged) is refused naming the field; the kubelet's",
      'own files of a pod (its volumes, etc-hosts, termination-log) are mapped onto the cell. Container',
      "output is written to the kubelet's log files (CRI format). Exec, Attach and PortForward return URLs",
      'of a streaming server in the shim (SPDY and WebSocket, as the kubelet speaks them), relayed to the',
      "cell through the controller. Stats are the cell's unit statistics. Container events, checkpoints and",
      'UpdateRuntimeConfig answer UNIMPLEMENTED naming themselves. docs/cri.md has the details.',
    ].join('\n'),
  );

program
  .command('serve')
  .description('serve the CRI on --listen until SIGINT/SIGTERM')
  .requiredOption('--listen <path>', 'unix socket path, created 0600 (root only); the kubelet takes it as --container-runtime-endpoint=unix://PATH')
  .requiredOption('--state-dir <dir>', 'where image records are kept (DIR/images/<id>.json, written atomically)')
  .option('--insecure-registry <host:port>', 'a registry to reach over plain HTTP (repeatable; shorthand for a --registry-config entry with plainHttp)', collect, [])
  .option('--registry-config <file>', 'per-registry CAs, client certificates, mirrors and rewrites: JSON or YAML with a "registries:" map, as for cell-agent (docs/registries.md)')
  .option('--platform <os/arch[/variant]>', "the cells' platform, which picks an image index's manifest (default: this node's)")
  .option('--controller-config <file>', 'a cellctl configuration (`controller issue-user NAME --group GROUP -o FILE`): the controller to run pods on, and as whom')
  .option('--context <name>', "the configuration's context (default: its current-context)")
  .option('--controller <host:port>', "the controller's address (default: the context's server)")
  .option('--sandbox-image <ref>', "the image of the unit that holds a sandbox's cell while it has no container (containerd's sandbox_image)", DEFAULT_SANDBOX_IMAGE)
  .option(
    '--kubelet-pods-dir <dir>',
    "the kubelet's pods directory: its volume files (configMaps, secrets, tokens) are copied to the pod's cell; any other host mount is refused",
    DEFAULT_PODS_ROOT,
  )
  .option(
    '--streaming-listen <host:port>',
    'where the streaming server of Exec/Attach/PortForward listens (each URL holds a single-use token valid for a minute). The kubelet on this node proxies kubectl exec/attach/port-forward to it, so loopback is the safe default; any other address needs --streaming-tls-cert and --streaming-tls-key',
    DEFAULT_STREAMING_LISTEN,
  )
  .option(
    '--streaming-idle-timeout <duration>',
    "an exec/attach/port-forward stream with no traffic either way this long is closed, as the kubelet's streamingConnectionIdleTimeout (e.g. 4h, 30m, 90s; 0: never)",
    '4h',
  )
  .option('--streaming-tls-cert <file>', 'a PEM certificate (chain): the streaming server speaks HTTPS and its URLs say https (with --streaming-tls-key)')
  .option('--streaming-tls-key <file>', "the PEM private key of --streaming-tls-cert's certificate")
  .option('--volume-sync-seconds <n>', "how often the kubelet's volume files are re-read, so a rotated token or an updated configMap reaches the cell", '10')
  .addHelpText(
    'after',
    [
      '',
      'Examples:',
      '  cello-cri serve --listen /run/cello/cri.sock --state-dir /var/lib/cello-cri',
      '  kubelet ... --container-runtime-endpoint=unix:///run/cello/cri.sock --image-service-endpoint=unix:///run/cello/cri.sock',
      '  crictl --runtime-endpoint unix:///run/cello/cri.sock pull docker.io/library/busybox:1.36',
      '  crictl --runtime-endpoint unix:///run/cello/cri.sock images',
      '  cello-cri serve --listen /run/cello/cri.sock --state-dir /var/lib/cello-cri --controller-config /etc/cello/cri-user.yaml',
      '',
      'Logs are JSON on stderr (CELLO_LOG_LEVEL=debug for more); secrets are redacted.',
      '',
    ].join('\n'),
  )
  .action(
    async (o: {
      listen: string;
      stateDir: string;
      insecureRegistry: string[];
      registryConfig?: string;
      platform?: string;
      controllerConfig?: string;
      context?: string;
      controller?: string;
      sandboxImage: string;
      kubeletPodsDir: string;
      volumeSyncSeconds: string;
      streamingListen: string;
      streamingIdleTimeout: string;
      streamingTlsCert?: string;
      streamingTlsKey?: string;
    }) => {
      const streamingIdleTimeoutMs = parseIdleTimeout('--streaming-idle-timeout', o.streamingIdleTimeout);
      const volumeSyncSeconds = Number(o.volumeSyncSeconds);
      if (!Number.isFinite(volumeSyncSeconds) || volumeSyncSeconds <= 0)
        throw new Error(`--volume-sync-seconds ${JSON.stringify(o.volumeSyncSeconds)}: expected a positive number`);
      const logger = pino(
        { level: process.env.CELLO_LOG_LEVEL ?? 'info', base: { app: 'cello-cri' }, redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR } },
        pino.destination(2),
      );
      const base: RegistryConfig = o.registryConfig ? loadRegistryConfig(o.registryConfig) : {};
      const server = await startCriServer({
        socket: o.listen,
        stateDir: o.stateDir,
        registries: withShorthands(base, { plainHttp: o.insecureRegistry }),
        ...(o.platform ? { platform: parsePlatform(o.platform) } : {}),
        version: CRI_VERSION,
        logger,
        sandboxImage: o.sandboxImage,
        kubeletPodsDir: o.kubeletPodsDir,
        volumeSyncSeconds,
        streamingListen: o.streamingListen,
        streamingIdleTimeoutMs,
        streamingTls: { cert: o.streamingTlsCert, key: o.streamingTlsKey },
        ...(o.controllerConfig
          ? { controller: { config: o.controllerConfig, ...(o.context ? { context: o.context } : {}), ...(o.controller ? { server: o.controller } : {}) } }
          : {}),
      });
      // Printed for scripts and tests.
      process.stdout.write(`listening ${server.socket}\n`);
      const stop = () => {
        void server.stop().then(() => process.exit(0));
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    },
  );

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`cello-cri: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
