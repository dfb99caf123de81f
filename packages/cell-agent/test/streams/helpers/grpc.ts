// TEST HELPER: serves the stream handlers alone on a loopback gRPC server (plaintext) and returns
// a client, so the stream services are tested through the real gRPC API.
import { credentials, Server, ServerCredentials, type ClientDuplexStream } from '@grpc/grpc-js';
import { pino } from 'pino';
import { type CellAgentClient, ExecInput, type ExecOutput, type ExitStatus } from '@cello/proto/cell';
import { freePort } from '@cello/testkit';
import { type AgentMetrics, instrumentService } from '../../../src/metrics/index.js';
import { createStreamHandlers, type StreamHandlerDeps, type StreamHandlers } from '../../../src/server/stream-handlers.js';
import { cellAgentServiceDefinition, newCellAgentClient, STREAM_CHANNEL_OPTIONS } from '../../../src/server/wire.js';

export interface TestServer {
  client: CellAgentClient;
  handlers: StreamHandlers;
  port: number;
  stop(): Promise<void>;
}

export async function startStreamServer(deps: Omit<StreamHandlerDeps, 'logger'>, opts: { instrument?: AgentMetrics } = {}): Promise<TestServer> {
  const handlers = createStreamHandlers({ ...deps, logger: pino({ level: 'warn' }) });
  const server = new Server();
  const { close: _close, statsCollector: _s, ...impl } = handlers;
  // The definition the agent serves (bulk frames serialized by hand), so the tests cover it.
  server.addService(cellAgentServiceDefinition, opts.instrument ? instrumentService(impl, opts.instrument) : impl);
  const port = await freePort();
  await new Promise<void>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  // ... and the client ctl uses (bulk frames decoded as views).
  const client = newCellAgentClient(`127.0.0.1:${port}`, credentials.createInsecure(), STREAM_CHANNEL_OPTIONS);
  return {
    client,
    handlers,
    port,
    stop: async () => {
      client.close();
      handlers.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
    },
  };
}

export interface ExecRun {
  stdout: Buffer;
  stderr: Buffer;
  exit: ExitStatus | undefined;
  error: (Error & { code?: number }) | undefined;
}

/** Collects an exec/attach call's output until it ends, with a deadline. */
export function collectExec(call: ClientDuplexStream<ExecInput, ExecOutput>, timeoutMs = 20_000): Promise<ExecRun> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let exit: ExitStatus | undefined;
  let exits = 0;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`exec did not finish within ${timeoutMs} ms; stdout so far: ${Buffer.concat(out).toString().slice(-300)}`));
    }, timeoutMs);
    call.on('data', (m: ExecOutput) => {
      if (m.frame?.$case === 'stdout') out.push(m.frame.value);
      else if (m.frame?.$case === 'stderr') err.push(m.frame.value);
      else if (m.frame?.$case === 'exit') {
        exit = m.frame.value;
        exits += 1;
      }
    });
    const done = (error?: Error & { code?: number }) => {
      clearTimeout(timer);
      if (exits > 1) return reject(new Error(`got ${exits} exit frames`));
      resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err), exit, error });
    };
    call.on('error', (e) => done(e));
    call.on('end', () => setImmediate(() => done()));
  });
}

export const start = (s: Partial<NonNullable<Extract<ExecInput['frame'], { $case: 'start' }>>['value']>) => ExecInput.fromPartial({ frame: { $case: 'start', value: s } });
export const stdin = (d: string | Buffer) => ExecInput.fromPartial({ frame: { $case: 'stdin', value: Buffer.from(d) } });
export const stdinEof = () => ExecInput.fromPartial({ frame: { $case: 'stdinEof', value: true } });
export const resize = (columns: number, rows: number) => ExecInput.fromPartial({ frame: { $case: 'resize', value: { columns, rows } } });
