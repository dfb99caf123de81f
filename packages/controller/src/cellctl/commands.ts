// cellctl's commands. The CLI talks only to the controller; streams (logs, exec, attach,
// port-forward) go controller -> agent, and `exec` exits with the remote command's exit code.
import { createServer, type Socket } from 'node:net';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { Command, Option, InvalidArgumentError } from 'commander';
import { credentials, status as Status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { parseAllDocuments, stringify } from 'yaml';
import { ExecInput, LogsRequest as AgentLogsRequest, PortForwardFrame, type AgentLogChunk, type ExecOutput, type LogChunk } from '@cello/proto/cell';
import { ControllerClient, EventType, type Cell, type CellEvent, type PodEvent, type PodObject, type PodRef } from '@cello/proto/controller';
import { VERSION } from '../version.js';
import { addSupportCommands } from './support-commands.js';
import { unary } from './unary.js';
import { cellHeader, cellRow, describePod, podHeader, podRow, render, table } from './format.js';
import { kubeOutput, names } from './kube-output.js';
import { JsonPathError, jsonPath, parseTemplate } from './jsonpath.js';
import { ConfigError } from '../errors.js';
import { CONFIG_ENV, configPath, readConfig, redacted, resolveContext, writeConfig } from './config.js';
import { API_CHANNEL_OPTIONS, apiChannelCredentials } from '../api/auth/client.js';

export const DEFAULT_SERVER = '127.0.0.1:7390';
export const SERVER_ENV = 'CELLO_CONTROLLER';

interface Options {
  server?: string;
  namespace?: string;
  config?: string;
  context?: string;
  insecure?: boolean;
}

interface Globals {
  server: string;
  namespace: string;
  creds: ChannelCredentials;
}

/**
 * Where and as whom to call: --server / $CELLO_CONTROLLER override the context's address; the
 * credentials always come from the configuration (plaintext only with --insecure or a cluster
 * marked insecure).
 */
function resolveGlobals(o: Options): Globals {
  const path = configPath(o.config);
  let cfg;
  try {
    cfg = readConfig(path);
  } catch (err) {
    throw new CliError(`error: ${(err as Error).message}`);
  }
  if (o.config && !cfg) throw new CliError(`error: ${o.config}: no such file`);
  const server = o.server || process.env[SERVER_ENV];
  if (o.insecure) return { server: server || DEFAULT_SERVER, namespace: o.namespace || 'default', creds: credentials.createInsecure() };
  if (!cfg) {
    throw new CliError(
      `error: no cellctl configuration at ${path}: \`npm start\` writes one for the local user; another user gets one with \`controller issue-user NAME --group GROUP -o FILE\` (then --config FILE or $${CONFIG_ENV})`,
    );
  }
  let ctx;
  try {
    ctx = resolveContext(cfg, path, o.context);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`error: ${err.message}`);
    throw err;
  }
  return {
    server: server || ctx.server,
    namespace: o.namespace || ctx.namespace || 'default',
    creds: ctx.credentials ? apiChannelCredentials(ctx.credentials) : credentials.createInsecure(),
  };
}

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

function connect(g: Globals): ControllerClient {
  // A large HTTP/2 window for logs and port-forward (the default 64 KiB costs a round trip per window).
  return new ControllerClient(g.server, g.creds, {
    ...API_CHANNEL_OPTIONS,
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc-node.flow_control_window': 8 << 20,
  });
}

function explain(err: unknown, g: Globals): Error {
  const e = err as ServiceError;
  if (e?.code === Status.UNAVAILABLE) {
    return new CliError(`cannot reach the controller at ${g.server} (${e.details}); start it with \`npm start\`, or point --server / $${SERVER_ENV} / --context at it`);
  }
  if (e?.code === Status.UNAUTHENTICATED) return new CliError(`error: not authenticated: ${e.details}`);
  if (e?.code === Status.PERMISSION_DENIED) return new CliError(`error: forbidden: ${e.details}`);
  if (typeof e?.code === 'number') return new CliError(`error: ${e.details || e.message}`);
  return err as Error;
}

function ref(g: Globals, name: string): PodRef {
  return { namespace: g.namespace, name };
}

/** Files of a directory (YAML/JSON), or the file itself; '-' is stdin. */
function manifestFiles(path: string): Array<{ name: string; text: string }> {
  if (path === '-') return [{ name: 'stdin', text: readFileSync(0, 'utf8') }];
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new CliError(`error: the path "${path}" does not exist`);
  }
  if (st.isDirectory()) {
    return readdirSync(path)
      .filter((f) => ['.yaml', '.yml', '.json'].includes(extname(f)))
      .sort()
      .map((f) => ({ name: join(path, f), text: readFileSync(join(path, f), 'utf8') }));
  }
  return [{ name: path, text: readFileSync(path, 'utf8') }];
}

/** One request per Pod in a file (a List's or PodList's items too), each carrying the file's Secrets and ConfigMaps. */
export function splitManifests(text: string): string[] {
  const docs = parseAllDocuments(text);
  const pods: string[] = [];
  const data: string[] = [];
  const add = (obj: { kind?: string }, src: () => string) => {
    if (obj.kind === 'Secret' || obj.kind === 'ConfigMap') data.push(src());
    else pods.push(src());
  };
  for (const d of docs) {
    const obj = d.toJSON() as { kind?: string; items?: unknown } | null;
    if (obj === null || obj === undefined) continue;
    // `get pods -o yaml` prints a PodList: each item is applied as its own pod.
    if ((obj.kind === 'List' || obj.kind === 'PodList') && Array.isArray(obj.items)) {
      // Re-serialized as YAML 1.1, the dialect the core parses (as kubectl does): in 1.2 a label
      // value such as "yes" would be written bare and read back as a boolean.
      for (const item of obj.items as { kind?: string }[]) add(item ?? {}, () => stringify(item, { version: '1.1' }));
    } else add(obj, () => d.toString());
  }
  if (pods.length === 0) return data.length ? [data.join('---\n')] : [];
  return pods.map((p) => [p, ...data].join('---\n'));
}

/** `-o`: wide, json, yaml, name, or jsonpath=TEMPLATE (checked here, so a bad template fails before any call). */
export function parseOutput(v: string): string {
  if (['wide', 'json', 'yaml', 'name'].includes(v)) return v;
  const m = /^jsonpath=(.*)$/s.exec(v);
  if (!m) throw new InvalidArgumentError('expected wide, json, yaml, name or jsonpath=TEMPLATE');
  if (!m[1]) throw new InvalidArgumentError('jsonpath= needs a template, e.g. jsonpath={.status.phase}');
  try {
    parseTemplate(m[1]);
  } catch (err) {
    if (err instanceof JsonPathError) throw new InvalidArgumentError(err.message);
    throw err;
  }
  return v;
}

/** Objects in a machine-readable -o format (everything but the table formats). */
export function printObjects(output: string, kind: 'pod' | 'cell', items: Array<PodObject | Cell>, single: boolean): string {
  if (output === 'name') return names(kind, items);
  const data = kubeOutput(kind, items, single);
  if (output === 'json' || output === 'yaml') return render(output, data);
  try {
    return jsonPath(output.slice('jsonpath='.length), data);
  } catch (err) {
    if (err instanceof JsonPathError) throw new CliError(`error: ${err.message}`);
    throw err;
  }
}

function parseDuration(v: string): number {
  const m = /^(\d+)(s|m|h)?$/.exec(v);
  if (!m) throw new InvalidArgumentError('expected a duration like 30s, 5m or 2h');
  return Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
}

function parseIntArg(v: string): number {
  if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError('expected an integer');
  return Number(v);
}

function writeLog(chunk: LogChunk, timestamps: boolean): void {
  if (chunk.text && chunk.text.length > 0 && chunk.entries.length === 0) {
    process.stdout.write(chunk.text);
    return;
  }
  for (const e of chunk.entries) {
    const ts = timestamps ? `${new Date(e.timeSeconds * 1000).toISOString().replace(/\.\d+Z$/, '')}.${String(e.timeNanos).padStart(9, '0')}Z ` : '';
    const out = e.stream === 2 ? process.stderr : process.stdout;
    out.write(ts);
    out.write(e.line);
    if (!e.partial) out.write('\n');
  }
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };

async function execLike(g: Globals, kind: 'exec' | 'attach', pod: string, o: { container?: string; stdin?: boolean; tty?: boolean }, command: string[]): Promise<number> {
  const client = connect(g);
  const stream = kind === 'exec' ? client.exec() : client.attach();
  const tty = !!o.tty && !!process.stdout.isTTY;
  const wantStdin = !!o.stdin;
  stream.write({ frame: { $case: 'target', value: ref(g, pod) } });
  stream.write({
    frame: {
      $case: 'input',
      value: ExecInput.fromPartial({
        frame: {
          $case: 'start',
          value: { container: o.container ?? '', command, tty: !!o.tty, stdin: wantStdin, size: { columns: process.stdout.columns ?? 80, rows: process.stdout.rows ?? 24 } },
        },
      }),
    },
  });
  const raw = tty && wantStdin && process.stdin.isTTY;
  if (raw) process.stdin.setRawMode(true);
  const onResize = () =>
    stream.write({
      frame: { $case: 'input', value: ExecInput.fromPartial({ frame: { $case: 'resize', value: { columns: process.stdout.columns, rows: process.stdout.rows } } }) },
    });
  if (tty) process.stdout.on('resize', onResize);
  if (wantStdin) {
    process.stdin.on('data', (b: Buffer) => stream.write({ frame: { $case: 'input', value: ExecInput.fromPartial({ frame: { $case: 'stdin', value: b } }) } }));
    process.stdin.on('end', () => {
      stream.write({ frame: { $case: 'input', value: ExecInput.fromPartial({ frame: { $case: 'stdinEof', value: true } }) } });
    });
  }
  return new Promise<number>((resolve, reject) => {
    let code: number | undefined;
    const done = (c: number) => {
      if (raw) process.stdin.setRawMode(false);
      process.stdin.pause();
      process.stdin.unref?.();
      if (tty) process.stdout.off('resize', onResize);
      resolve(c);
    };
    stream.on('data', (out: ExecOutput) => {
      const f = out.frame;
      if (!f) return;
      if (f.$case === 'stdout') process.stdout.write(f.value);
      else if (f.$case === 'stderr') process.stderr.write(f.value);
      else if (f.$case === 'exit') {
        code = f.value.signal ? 128 + (SIGNALS[f.value.signal] ?? 1) : f.value.exitCode;
        if (f.value.message && code !== 0) process.stderr.write(`${f.value.message}\n`);
      }
    });
    stream.on('end', () => done(code ?? 0));
    stream.on('error', (err: ServiceError) => {
      if (raw) process.stdin.setRawMode(false);
      if (code !== undefined) return done(code);
      reject(explain(err, g));
    });
  });
}

async function portForward(g: Globals, pod: string, specs: string[]): Promise<void> {
  const client = connect(g);
  const pairs = specs.map((s) => {
    const m = /^(?:(\d+)?:)?(\d+)$/.exec(s);
    if (!m) throw new CliError(`error: "${s}" is not LOCAL:REMOTE or PORT`);
    const remote = Number(m[2]);
    const local = m[1] === undefined ? (s.includes(':') ? 0 : remote) : Number(m[1]);
    return { local, remote };
  });
  // Fail early, like kubectl, when the pod cannot be reached.
  await unary(client, 'getPod', { pod: ref(g, pod) }).catch((err) => {
    throw explain(err, g);
  });
  for (const { local, remote } of pairs) {
    const server = createServer((sock: Socket) => {
      const stream = client.portForward();
      stream.write({ frame: { $case: 'target', value: ref(g, pod) } });
      stream.write({ frame: { $case: 'forward', value: PortForwardFrame.fromPartial({ frame: { $case: 'start', value: { port: remote } } }) } });
      sock.on('data', (b: Buffer) => stream.write({ frame: { $case: 'forward', value: PortForwardFrame.fromPartial({ frame: { $case: 'data', value: b } }) } }));
      sock.on('end', () => {
        stream.write({ frame: { $case: 'forward', value: PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }) } });
      });
      sock.on('error', () => stream.cancel());
      sock.on('close', () => stream.end());
      stream.on('data', (f: PortForwardFrame) => {
        const x = f.frame;
        if (!x) return;
        if (x.$case === 'data') sock.write(x.value);
        else if (x.$case === 'closeWrite') sock.end();
        else if (x.$case === 'error') {
          process.stderr.write(`error forwarding port ${remote}: ${x.value}\n`);
          sock.destroy();
        }
      });
      stream.on('end', () => sock.end());
      stream.on('error', (err: ServiceError) => {
        if (err.code !== Status.CANCELLED) process.stderr.write(`error forwarding port ${remote}: ${err.details}\n`);
        sock.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(local, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    process.stdout.write(`Forwarding from 127.0.0.1:${port} -> ${remote}\n`);
  }
  await new Promise(() => undefined);
}

/**
 * Waits until what was written to stdout and stderr has been handed to the OS: process.exit
 * drops writes still queued on a pipe (`cellctl logs job | head` lost the end of the log).
 */
function flushed(): Promise<void> {
  const drain = (s: NodeJS.WriteStream) => new Promise<void>((resolve) => (s.writableLength === 0 ? resolve() : s.write('', () => resolve())));
  return Promise.all([drain(process.stdout), drain(process.stderr)]).then(() => undefined);
}

export function buildProgram(exit: (code: number) => void = (c) => process.exit(c)): Command {
  const program = new Command('cellctl')
    .description('Talk to a Cello controller, like kubectl: apply pods, watch them, read logs, exec, forward ports.')
    .version(VERSION, '--client-version', 'print the client version')
    .option('-s, --server <host:port>', `controller API address (env ${SERVER_ENV}; default: the current context's)`)
    .option('-n, --namespace <ns>', "namespace (default: the context's, else default)")
    .option('--config <file>', `cellctl configuration (env ${CONFIG_ENV}; default ~/.cello/config)`)
    .option('--context <name>', 'the context of the configuration to use (default: its current-context)')
    .option('--insecure', 'plaintext without credentials (only a controller with api.insecure on loopback accepts it)')
    .showHelpAfterError()
    .addHelpText(
      'after',
      `
Examples:
  cellctl apply -f examples/                 create or update the pods in a directory
  cellctl get pods -w                        watch pods change
  cellctl get cells -o wide                  cells, their instance types, prices and addresses
  cellctl describe pod web                   events, conditions, cell and instance type
  cellctl logs web -f --tail 20              follow a container's log
  cellctl exec web -- ls /                   run a command (exit code propagates)
  cellctl exec -it web -- sh                 an interactive shell
  cellctl port-forward web 8080:80           forward a local port to the pod
  cellctl delete pod web --grace 5           stop gracefully, then end its cell`,
    );
  let resolved: Globals | undefined;
  const g = (): Globals => (resolved ??= resolveGlobals(program.opts<Options>()));

  const run =
    <A extends unknown[]>(fn: (...a: A) => Promise<number | void>) =>
    async (...args: A) => {
      try {
        const code = await fn(...args);
        await flushed();
        exit(code ?? 0);
      } catch (err) {
        let e: Error;
        try {
          e = err instanceof CliError ? err : explain(err, g());
        } catch (inner) {
          e = inner as Error;
        }
        process.stderr.write(`${e.message}\n`);
        await flushed();
        exit(e instanceof CliError ? e.exitCode : 1);
      }
    };

  program
    .command('apply')
    .description('create or update pods from Kubernetes Pod manifests (Secrets and ConfigMaps in the same file go with them)')
    .requiredOption('-f, --filename <path...>', 'file, directory, or - for stdin')
    .option('--dry-run', 'validate only')
    .action(
      run(async (o: { filename: string[]; dryRun?: boolean }) => {
        const client = connect(g());
        let failed = 0;
        for (const path of o.filename) {
          for (const f of manifestFiles(path)) {
            for (const manifest of splitManifests(f.text)) {
              let before: PodObject | undefined;
              try {
                const name = (
                  parseAllDocuments(manifest)
                    .map((d) => d.toJSON() as { kind?: string; metadata?: { name?: string; namespace?: string } })
                    .find((d) => d?.kind === 'Pod') ?? {}
                ).metadata;
                if (name?.name) before = await unary(client, 'getPod', { pod: { namespace: name.namespace || g().namespace, name: name.name } }).catch(() => undefined);
                const pod = await unary(client, 'applyPod', { manifest, namespace: g().namespace, dryRun: !!o.dryRun });
                const what = !before
                  ? 'created'
                  : before.metadata?.generation === pod.metadata?.generation && before.metadata?.resourceVersion === pod.metadata?.resourceVersion
                    ? 'unchanged'
                    : 'configured';
                process.stdout.write(`pod/${pod.metadata?.name} ${what}${o.dryRun ? ' (dry run)' : ''}\n`);
              } catch (err) {
                failed++;
                const e = err as ServiceError;
                if (e?.code === Status.UNAVAILABLE) throw err;
                process.stderr.write(`error: ${f.name}: ${e.details || e.message}\n`);
              }
            }
          }
        }
        return failed ? 1 : 0;
      }),
    );

  const get = program.command('get').description('list pods or cells');
  const outputOpt = () => new Option('-o, --output <format>', 'wide, json, yaml, name or jsonpath=TEMPLATE (as kubectl)').argParser(parseOutput);
  get
    .command('pods [name]')
    .alias('pod')
    .alias('po')
    .description('list pods')
    .addOption(outputOpt())
    .option('-w, --watch', 'after listing, print each change')
    .option('-l, --selector <selector>', 'label selector, e.g. app=web,tier!=db')
    .option('-A, --all-namespaces', 'pods of every namespace')
    .action(
      run(async (name: string | undefined, o: { output?: string; watch?: boolean; selector?: string; allNamespaces?: boolean }) => {
        const client = connect(g());
        const wide = o.output === 'wide';
        const allNs = !!o.allNamespaces;
        const ns = allNs ? '' : g().namespace;
        if (o.watch) {
          const stream = client.watchPods({ namespace: ns, labelSelector: o.selector ?? '' });
          let header = false;
          stream.on('data', (ev: PodEvent) => {
            if (!ev.pod || (name && ev.pod.metadata?.name !== name)) return;
            if (o.output && o.output !== 'wide') {
              process.stdout.write(printObjects(o.output, 'pod', [ev.pod], true));
              if (o.output === 'yaml') process.stdout.write('---\n');
              return;
            }
            const rows = header ? [] : [podHeader(wide, allNs)];
            header = true;
            const row = podRow(ev.pod, wide, allNs);
            if (ev.type === EventType.EVENT_TYPE_DELETED) row[allNs ? 3 : 2] = 'Deleted';
            rows.push(row);
            process.stdout.write(table(rows));
          });
          await new Promise<void>((resolve, reject) => {
            stream.on('end', resolve);
            stream.on('error', (err: ServiceError) => reject(explain(err, g())));
          });
          return;
        }
        let pods: PodObject[];
        if (name) pods = [await unary(client, 'getPod', { pod: ref(g(), name) })];
        else pods = (await unary(client, 'listPods', { namespace: ns, labelSelector: o.selector ?? '' })).pods;
        if (o.output && o.output !== 'wide') process.stdout.write(printObjects(o.output, 'pod', pods, !!name));
        else if (pods.length === 0) process.stderr.write(`No resources found${allNs ? '' : ` in ${ns} namespace`}.\n`);
        else process.stdout.write(table([podHeader(wide, allNs), ...pods.map((p) => podRow(p, wide, allNs))]));
      }),
    );
  get
    .command('cells [name]')
    .alias('cell')
    .description('list cells (the instances pods run on)')
    .addOption(outputOpt())
    .option('-w, --watch', 'after listing, print each change')
    .action(
      run(async (name: string | undefined, o: { output?: string; watch?: boolean }) => {
        const client = connect(g());
        const wide = o.output === 'wide';
        if (o.watch) {
          const stream = client.watchCells({});
          let header = false;
          stream.on('data', (ev: CellEvent) => {
            if (!ev.cell || (name && ev.cell.id !== name)) return;
            if (o.output && o.output !== 'wide') {
              process.stdout.write(printObjects(o.output, 'cell', [ev.cell], true));
              return;
            }
            const rows = header ? [] : [cellHeader(wide)];
            header = true;
            rows.push(cellRow(ev.cell, wide));
            process.stdout.write(table(rows));
          });
          await new Promise<void>((resolve, reject) => {
            stream.on('end', resolve);
            stream.on('error', (err: ServiceError) => reject(explain(err, g())));
          });
          return;
        }
        let cells = (await unary(client, 'listCells', {})).cells;
        if (name) {
          cells = cells.filter((c) => c.id === name);
          if (cells.length === 0) throw new CliError(`error: cell ${name} not found`);
        }
        if (o.output && o.output !== 'wide') process.stdout.write(printObjects(o.output, 'cell', cells, !!name));
        else if (cells.length === 0) process.stderr.write('No cells.\n');
        else process.stdout.write(table([cellHeader(wide), ...cells.map((c) => cellRow(c, wide))]));
      }),
    );

  program
    .command('describe')
    .description('show a pod in detail: containers, conditions, cell, instance type, events')
    .argument('<kind>', 'pod')
    .argument('<name>')
    .action(
      run(async (kind: string, name: string) => {
        if (!['pod', 'pods', 'po'].includes(kind)) throw new CliError(`error: cannot describe "${kind}": only pods`);
        const client = connect(g());
        const pod = await unary(client, 'getPod', { pod: ref(g(), name) });
        const cells = pod.cellId ? (await unary(client, 'listCells', {})).cells : [];
        const events = (await unary(client, 'listEvents', { pod: ref(g(), name), limit: 50 })).events;
        process.stdout.write(
          describePod(
            pod,
            cells.find((c) => c.id === pod.cellId),
            events,
          ),
        );
      }),
    );

  program
    .command('logs')
    .description("print a container's log, or with cell/ID a cell agent's own log")
    .argument('<pod>', 'the pod, or cell/ID for the agent of that cell')
    .option('-c, --container <name>', 'container (default: the only or first one)')
    .option('-f, --follow', 'keep printing new lines')
    .option('--tail <lines>', 'only the last N lines', parseIntArg)
    .option('--limit-bytes <n>', 'only the last N bytes', parseIntArg)
    .option('--since <duration>', 'only lines newer than this (e.g. 30s, 5m, 1h)', parseDuration)
    .option('--timestamps', 'prefix each line with its RFC 3339 timestamp')
    .option('-p, --previous', 'the log of the previous instance of the container')
    .action(
      run(async (pod: string, o: { container?: string; follow?: boolean; tail?: number; limitBytes?: number; since?: number; timestamps?: boolean; previous?: boolean }) => {
        const client = connect(g());
        const cell = /^cells?\/(.+)$/.exec(pod)?.[1];
        if (cell !== undefined) {
          // A cell agent's own log: its tail and follow; the container options do not apply.
          const unsupported = Object.entries({
            '--container': o.container,
            '--limit-bytes': o.limitBytes,
            '--since': o.since,
            '--timestamps': o.timestamps,
            '--previous': o.previous,
          })
            .filter(([, v]) => v !== undefined && v !== false)
            .map(([k]) => k);
          if (unsupported.length) throw new CliError(`error: ${unsupported.join(', ')}: not for a cell agent's log (cell/${cell} takes --tail and -f)`);
          const stream = client.cellLogs({ cellId: cell, options: { tailLines: Math.max(0, o.tail ?? 0), follow: !!o.follow } });
          stream.on('data', (c: AgentLogChunk) => process.stdout.write(c.text));
          await new Promise<void>((resolve, reject) => {
            stream.on('end', resolve);
            stream.on('error', (err: ServiceError) => reject(explain(err, g())));
          });
          return;
        }
        const options = AgentLogsRequest.fromPartial({
          container: o.container ?? '',
          follow: !!o.follow,
          timestamps: !!o.timestamps,
          previous: !!o.previous,
          ...(o.tail !== undefined ? { tailLines: o.tail } : {}),
          ...(o.limitBytes !== undefined ? { limitBytes: o.limitBytes } : {}),
          ...(o.since !== undefined ? { sinceSeconds: o.since } : {}),
        });
        const stream = client.logs({ pod: ref(g(), pod), options });
        stream.on('data', (c: LogChunk) => writeLog(c, !!o.timestamps));
        await new Promise<void>((resolve, reject) => {
          stream.on('end', resolve);
          stream.on('error', (err: ServiceError) => reject(explain(err, g())));
        });
      }),
    );

  program
    .command('exec')
    .description('run a command in a container; cellctl exits with its exit code')
    .argument('<pod>')
    .argument('<command...>', 'the command, after --')
    .option('-c, --container <name>', 'container (default: the first one)')
    .option('-i, --stdin', 'pass stdin to the command')
    .option('-t, --tty', 'allocate a terminal')
    .action(run(async (pod: string, command: string[], o: { container?: string; stdin?: boolean; tty?: boolean }) => execLike(g(), 'exec', pod, o, command)));

  program
    .command('attach')
    .description("connect to a container's own stdin/stdout")
    .argument('<pod>')
    .option('-c, --container <name>', 'container')
    .option('-i, --stdin', 'pass stdin to the container')
    .option('-t, --tty', 'the container has a terminal')
    .action(run(async (pod: string, o: { container?: string; stdin?: boolean; tty?: boolean }) => execLike(g(), 'attach', pod, o, [])));

  program
    .command('port-forward')
    .description('forward local ports to a pod: LOCAL:REMOTE, or PORT for the same number, or :REMOTE for any free local port')
    .argument('<pod>')
    .argument('<ports...>')
    .action(run(async (pod: string, ports: string[]) => portForward(g(), pod, ports)));

  program
    .command('delete')
    .description('delete a pod: its containers stop gracefully, then its cell is terminated')
    .argument('<kind>', 'pod')
    .argument('<names...>')
    .option('--grace <seconds>', "grace period before SIGKILL (default: the pod's terminationGracePeriodSeconds)", parseIntArg)
    .option('--no-wait', 'return at once instead of when the pod and its cell are gone')
    .action(
      run(async (kind: string, names: string[], o: { grace?: number; wait: boolean }) => {
        if (!['pod', 'pods', 'po'].includes(kind)) throw new CliError(`error: cannot delete "${kind}": only pods`);
        const client = connect(g());
        let failed = 0;
        await Promise.all(
          names.map(async (name) => {
            try {
              await unary(
                client,
                'deletePod',
                { pod: ref(g(), name), wait: o.wait, ...(o.grace !== undefined ? { gracePeriodSeconds: o.grace } : {}) },
                ((o.grace ?? 30) + 180) * 1000,
              );
              process.stdout.write(`pod "${name}" deleted\n`);
            } catch (err) {
              failed++;
              const e = err as ServiceError;
              if (e?.code === Status.UNAVAILABLE) throw err;
              process.stderr.write(`error: ${e.details || e.message}\n`);
            }
          }),
        );
        return failed ? 1 : 0;
      }),
    );

  addSupportCommands(program, {
    client: () => connect(g()),
    namespace: () => g().namespace,
    run,
    call: (method, req, timeoutMs) => unary(connect(g()), method, req, timeoutMs),
    explain: (err) => explain(err, g()),
    usage: (message) => new CliError(message),
  });

  const config = program.command('config').description('show or change the cellctl configuration (--config, $CELLO_CONFIG, ~/.cello/config)');
  const loadOrFail = () => {
    const path = configPath(program.opts<Options>().config);
    const cfg = readConfig(path);
    if (!cfg) throw new CliError(`error: no cellctl configuration at ${path}`);
    return { path, cfg };
  };
  config
    .command('view')
    .description('print the configuration (certificates, keys and tokens omitted)')
    .action(run(async () => void process.stdout.write(stringify(redacted(loadOrFail().cfg)))));
  config
    .command('get-contexts')
    .description('list the contexts; * marks the current one')
    .action(
      run(async () => {
        const { cfg } = loadOrFail();
        const rows = [['CURRENT', 'NAME', 'SERVER', 'USER', 'NAMESPACE']];
        for (const c of cfg.contexts) {
          const server = cfg.clusters.find((x) => x.name === c.context.cluster)?.cluster.server ?? '';
          rows.push([c.name === cfg['current-context'] ? '*' : '', c.name, server, c.context.user, c.context.namespace ?? '']);
        }
        process.stdout.write(table(rows));
      }),
    );
  config
    .command('use-context')
    .description('make NAME the current context')
    .argument('<name>')
    .action(
      run(async (name: string) => {
        const { path, cfg } = loadOrFail();
        if (!cfg.contexts.some((c) => c.name === name)) throw new CliError(`error: no context named "${name}" in ${path}`);
        cfg['current-context'] = name;
        writeConfig(path, cfg);
        process.stdout.write(`Switched to context "${name}".\n`);
      }),
    );

  program
    .command('version')
    .description('client and controller versions')
    .action(
      run(async () => {
        process.stdout.write(`Client Version: ${VERSION}\n`);
        const v = await unary(connect(g()), 'version', {}, 5000);
        process.stdout.write(`Server Version: ${v.version} (controller ${v.controllerId}, store ${v.store}, provider ${v.provider}) at ${g().server}\n`);
      }),
    );

  return program;
}
