// Test helpers: the real cello-cri CLI (dist/cli.js) as a child process, and crictl against it.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { waitFor } from '@cello/testkit';
import { expect } from 'vitest';
import { ImageServiceClient, RuntimeServiceClient } from '../src/gen/runtime/v1/api.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli.js');

export interface Shim {
  socket: string;
  dir: string;
  stateDir: string;
  logs(): string;
  /** Stops the shim; removes its directory and state unless `keepState` (to start another on the same state). */
  stop(opts?: { keepState?: boolean }): Promise<void>;
}

/** Starts `cello-cri serve` on a socket in a fresh directory (or `stateDir`, to test restarts). */
export async function startShim(args: string[] = [], opts: { stateDir?: string } = {}): Promise<Shim> {
  const dir = mkdtempSync(join(tmpdir(), 'cello-cri-'));
  const socket = join(dir, 'cri.sock');
  const stateDir = opts.stateDir ?? join(dir, 'state');
  const child: ChildProcess = spawn(process.execPath, [CLI, 'serve', '--listen', socket, '--state-dir', stateDir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
  let exited = false;
  child.on('exit', () => (exited = true));
  const stop = async ({ keepState = false }: { keepState?: boolean } = {}) => {
    if (!exited) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    if (keepState) return;
    rmSync(dir, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      'cello-cri listening',
      () => {
        if (exited) throw new Error(`cello-cri exited: ${err.slice(-2000)}`);
        return out.includes('listening ');
      },
      { timeoutMs: 20_000 },
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return { socket, dir, stateDir, logs: () => err, stop };
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs crictl against `socket` (no config file, a bounded timeout); never throws on a non-zero exit. */
export function crictl(bin: string, socket: string, args: string[], opts: { uid?: number } = {}): Promise<Run> {
  const cfgDir = mkdtempSync(join(tmpdir(), 'cello-crictl-'));
  const cfg = join(cfgDir, 'crictl.yaml');
  writeFileSync(cfg, `runtime-endpoint: unix://${socket}\nimage-endpoint: unix://${socket}\ntimeout: 20\n`, { mode: 0o644 });
  const argv = ['--config', cfg, ...args];
  const [cmd, full] = opts.uid !== undefined ? ['setpriv', [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', bin, ...argv]] : [bin, argv];
  return new Promise((res) => {
    // Longer than any `--timeout` a test gives crictl (120 s), so crictl reports its own deadline;
    // a kill here says so instead of passing as a bare exit 1 (a busy CI machine took over 60 s
    // for an `rmp -f`).
    execFile(cmd, full as string[], { timeout: 180_000, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      rmSync(cfgDir, { recursive: true, force: true });
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : 1) : 0;
      const killed = error && (error as { killed?: boolean }).killed ? `\n(crictl killed after 180 s by the test helper)` : '';
      res({ code, stdout, stderr: stderr + killed });
    });
  });
}

/**
 * crictl bound to a test's current shim (read at each call: a test may restart its shim): `run`
 * never throws, `ok` expects exit 0 and shows the shim's log when not, `file` writes a JSON config
 * into the shim's directory for crictl to read.
 */
export function crictlFor(bin: () => string, current: () => Shim) {
  const run = (args: string[]): Promise<Run> => crictl(bin(), current().socket, args);
  return {
    run,
    async ok(args: string[]): Promise<string> {
      const r = await run(args);
      expect(r.code, `crictl ${args.join(' ')}: ${r.stderr}\n--- shim:\n${current().logs().slice(-3000)}`).toBe(0);
      return r.stdout.trim();
    },
    file(name: string, body: unknown): string {
      const p = join(current().dir, name);
      writeFileSync(p, JSON.stringify(body));
      return p;
    },
  };
}

export function clients(socket: string): { images: ImageServiceClient; runtime: RuntimeServiceClient; close(): void } {
  const images = new ImageServiceClient(`unix:${socket}`, credentials.createInsecure());
  const runtime = new RuntimeServiceClient(`unix:${socket}`, credentials.createInsecure());
  return {
    images,
    runtime,
    close: () => {
      images.close();
      runtime.close();
    },
  };
}

/** A unary call's result or its gRPC error: `call((cb) => client.rpc(req, new Metadata(), { deadline: deadline() }, cb))`. */
export function call<Res>(invoke: (cb: (e: ServiceError | null, r: Res) => void) => unknown): Promise<{ res?: Res; err?: ServiceError }> {
  return new Promise((resolvePromise) => {
    invoke((e, r) => resolvePromise(e ? { err: e } : { res: r }));
  });
}

export function deadline(ms = 20_000): Date {
  return new Date(Date.now() + ms);
}
