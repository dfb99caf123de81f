// cellctl's support commands: events (stored, -w to follow), top pods|cells (the agents'
// Stats), audit (exec/attach/port-forward sessions the controller relayed), dump (the support
// bundle). Each calls one controller RPC, authorized there like every other call.
import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import type { Command } from 'commander';
import { Option } from 'commander';
import type { ServiceError } from '@grpc/grpc-js';
import { AuditSession, ClusterEvent, ListEventsRequest, type ControllerClient, type DeepPartial, type PodUsage, type SupportBundleChunk } from '@cello/proto/controller';
import { age, render, table } from './format.js';
import type { RequestOf, ResponseOf, UnaryMethod } from './unary.js';

export interface CommandContext {
  client(): ControllerClient;
  namespace(): string;
  run<A extends unknown[]>(fn: (...a: A) => Promise<number | void>): (...args: A) => Promise<void>;
  /** A unary call, its request built by the generated fromPartial (unary.ts). */
  call<M extends UnaryMethod>(method: M, req: DeepPartial<RequestOf<M>>, timeoutMs?: number): Promise<ResponseOf<M>>;
  /** A stream's error as cellctl reports it (unreachable, forbidden, ...). */
  explain(err: ServiceError): Error;
  /** An error of the command line itself (exit 1 with this message). */
  usage(message: string): Error;
}

/** kubectl top's units: millicores and Mi. */
const cores = (c: number) => `${Math.round(c * 1000)}m`;
const mebibytes = (b: number) => `${Math.round(b / (1024 * 1024))}Mi`;

function eventRow(e: ClusterEvent, allNs: boolean): string[] {
  const object = e.kind === 'Pod' ? `pod/${e.name}` : `cell/${e.name}`;
  return [...(allNs ? [e.namespace || '-'] : []), age(e.time), e.type, e.reason, object, e.source + (e.container ? `/${e.container}` : ''), e.message];
}

function awaitStream(stream: NodeJS.EventEmitter, explain: (err: ServiceError) => Error): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('error', (err: ServiceError) => reject(explain(err)));
  });
}

export function addSupportCommands(program: Command, c: CommandContext): void {
  program
    .command('events')
    .description("events the controller recorded: every one (cluster-wide), a pod's (--pod) or a cell's (--cell), oldest first")
    .option('--pod <name>', "only this pod's events (in --namespace)")
    .option('--cell <id>', "only this cell's events")
    .option('--limit <n>', 'only the newest N', (v) => Number.parseInt(v, 10))
    .option('-w, --watch', 'after listing, print each new event')
    .addOption(new Option('-o, --output <format>', 'json or yaml (one ClusterEvent per document with -w)').choices(['json', 'yaml']))
    .action(
      c.run(async (o: { pod?: string; cell?: string; limit?: number; watch?: boolean; output?: 'json' | 'yaml' }) => {
        if (o.pod && o.cell) throw c.usage('error: --pod and --cell: name one or the other');
        if (o.limit !== undefined && !(o.limit >= 0)) throw c.usage('error: --limit: expected a non-negative integer');
        const req = ListEventsRequest.fromPartial({ ...(o.pod ? { pod: { namespace: c.namespace(), name: o.pod } } : {}), cell: o.cell ?? '', limit: o.limit ?? 0 });
        const allNs = !o.pod && !o.cell;
        const header = [...(allNs ? ['NAMESPACE'] : []), 'LAST SEEN', 'TYPE', 'REASON', 'OBJECT', 'SOURCE', 'MESSAGE'];
        if (o.watch) {
          const stream = c.client().watchEvents(req);
          let printed = false;
          stream.on('data', (e: ClusterEvent) => {
            if (o.output) {
              process.stdout.write(render(o.output, ClusterEvent.toJSON(e)));
              if (o.output === 'yaml') process.stdout.write('---\n');
              return;
            }
            process.stdout.write(table(printed ? [eventRow(e, allNs)] : [header, eventRow(e, allNs)]));
            printed = true;
          });
          await awaitStream(stream, (err) => c.explain(err));
          return;
        }
        const { events } = await c.call('listEvents', req);
        if (o.output) process.stdout.write(render(o.output, { items: events.map((e) => ClusterEvent.toJSON(e)) }));
        else if (events.length === 0) process.stderr.write('No events found.\n');
        else process.stdout.write(table([header, ...events.map((e) => eventRow(e, allNs))]));
      }),
    );

  const top = program.command('top').description("usage of pods or cells, from their agents' statistics (as kubectl top)");
  top
    .command('pods')
    .alias('pod')
    .description('CPU and memory (working set) of running pods')
    .option('-A, --all-namespaces', 'pods of every namespace')
    .option('--containers', 'one line per container')
    .action(
      c.run(async (o: { allNamespaces?: boolean; containers?: boolean }) => {
        const allNs = !!o.allNamespaces;
        const r = await c.call('topPods', { namespace: allNs ? '' : c.namespace() });
        for (const u of r.unavailable) process.stderr.write(`warning: no statistics for ${u}\n`);
        if (r.pods.length === 0) {
          process.stderr.write(`No running pods${allNs ? '' : ` in ${c.namespace()} namespace`}.\n`);
          return;
        }
        const ns = (p: PodUsage) => (allNs ? [p.pod?.namespace ?? ''] : []);
        const rows = o.containers
          ? [
              [...(allNs ? ['NAMESPACE'] : []), 'POD', 'NAME', 'CPU(cores)', 'MEMORY(bytes)'],
              ...r.pods.flatMap((p) => p.containers.map((x) => [...ns(p), p.pod?.name ?? '', x.name, cores(x.cpuCores), mebibytes(x.memoryWorkingSetBytes)])),
            ]
          : [
              [...(allNs ? ['NAMESPACE'] : []), 'NAME', 'CPU(cores)', 'MEMORY(bytes)', 'CELL'],
              ...r.pods.map((p) => [...ns(p), p.pod?.name ?? '', cores(p.cpuCores), mebibytes(p.memoryWorkingSetBytes), p.cellId]),
            ];
        process.stdout.write(table(rows));
        return r.unavailable.length ? 1 : 0;
      }),
    );
  top
    .command('cells')
    .alias('cell')
    .description('CPU and memory of each serving cell (the whole instance, its agent included)')
    .action(
      c.run(async () => {
        const r = await c.call('topCells', {});
        for (const u of r.unavailable) process.stderr.write(`warning: no statistics for cell ${u}\n`);
        if (r.cells.length === 0) {
          process.stderr.write('No serving cells.\n');
          return r.unavailable.length ? 1 : 0;
        }
        const pct = (a: number, b: number) => (b > 0 ? `${Math.round((100 * a) / b)}%` : '-');
        process.stdout.write(
          table([
            ['NAME', 'CPU(cores)', 'CPU%', 'MEMORY(bytes)', 'MEMORY%', 'TYPE', 'POD'],
            ...r.cells.map((x) => [
              x.cellId,
              cores(x.cpuCores),
              pct(x.cpuCores, x.cpuCount),
              mebibytes(x.memoryUsedBytes),
              pct(x.memoryUsedBytes, x.memoryTotalBytes),
              x.instanceType,
              x.pod?.name ? `${x.pod.namespace}/${x.pod.name}` : '<none>',
            ]),
          ]),
        );
        return r.unavailable.length ? 1 : 0;
      }),
    );

  program
    .command('audit')
    .description('exec, attach and port-forward sessions: who, when, what, how it ended (newest last)')
    .argument('[pod]', "only this pod's sessions (in --namespace)")
    .option('-A, --all-namespaces', 'sessions of every namespace')
    .option('--limit <n>', 'only the newest N', (v) => Number.parseInt(v, 10))
    .addOption(new Option('-o, --output <format>', 'json or yaml').choices(['json', 'yaml']))
    .action(
      c.run(async (pod: string | undefined, o: { allNamespaces?: boolean; limit?: number; output?: 'json' | 'yaml' }) => {
        if (pod && o.allNamespaces) throw c.usage('error: a pod name and --all-namespaces: name one or the other');
        const req = { pod: o.allNamespaces ? { namespace: '', name: '' } : { namespace: c.namespace(), name: pod ?? '' }, limit: o.limit ?? 0 };
        const { sessions } = await c.call('listAudit', req);
        if (o.output) {
          process.stdout.write(render(o.output, { items: sessions.map((s) => AuditSession.toJSON(s)) }));
          return;
        }
        if (sessions.length === 0) {
          process.stderr.write('No sessions recorded.\n');
          return;
        }
        const ended = (s: AuditSession) => {
          if (s.exited) return s.signal ? `signal ${s.signal}` : `exit ${s.exitCode}`;
          if (s.error) return `error: ${s.error}`;
          return s.finishedAt ? 'ended' : 'open';
        };
        const duration = (s: AuditSession) => (s.startedAt && s.finishedAt ? `${((s.finishedAt.getTime() - s.startedAt.getTime()) / 1000).toFixed(1)}s` : '-');
        process.stdout.write(
          table([
            ['STARTED', 'USER', 'KIND', 'POD', 'CONTAINER', 'COMMAND', 'RESULT', 'DURATION'],
            ...sessions.map((s) => [
              s.startedAt ? s.startedAt.toISOString().replace(/\.\d{3}Z$/, 'Z') : '-',
              s.user,
              s.kind,
              `${s.pod?.namespace}/${s.pod?.name}`,
              s.container || '-',
              s.kind === 'portforward' ? `port ${s.port}` : s.command.join(' ') || '-',
              ended(s),
              duration(s),
            ]),
          ]),
        );
      }),
    );

  program
    .command('dump')
    .description('write one tar.gz for a support request: configuration (secrets redacted), pods, cells, events, audit, controller logs, versions')
    .option('-f, --file <path>', 'where to write it ("-": stdout)', `cello-dump-${new Date().toISOString().replace(/[:.]/g, '').slice(0, 15)}Z.tar.gz`)
    .option('--event-limit <n>', 'only the newest N events', (v) => Number.parseInt(v, 10))
    .action(
      c.run(async (o: { file: string; eventLimit?: number }) => {
        const stream = c.client().supportBundle({ eventLimit: o.eventLimit ?? 0 });
        const out = o.file === '-' ? process.stdout : createWriteStream(o.file, { mode: 0o600 });
        let bytes = 0;
        stream.on('data', (chunk: SupportBundleChunk) => {
          bytes += chunk.data.length;
          out.write(chunk.data);
        });
        await awaitStream(stream, (err) => c.explain(err));
        if (out !== process.stdout) {
          out.end();
          await finished(out);
          process.stderr.write(`wrote ${o.file} (${bytes} bytes); secrets are redacted, but read it before you send it\n`);
        }
      }),
    );
}
