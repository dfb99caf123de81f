// A real Cello controller for the shim's tests: the `controller` daemon (dist) with the local
// provider (real cell-agent processes, real runc) and an embedded store, as the controller's own
// end-to-end tests run it (packages/controller/test/helpers/cluster.ts). It writes an admin
// cellctl configuration, which the shim uses as its --controller-config.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { stringify } from 'yaml';
import { LocalProvider } from '@cello/controller';
import { freePort, waitExit, waitFor } from '@cello/testkit';

const run = promisify(execFile);
const CONTROLLER_BIN = join(dirname(createRequire(import.meta.url).resolve('@cello/controller')), 'bin', 'controller.js');

export interface TestController {
  server: string;
  /** The admin's cellctl configuration (the shim's --controller-config). */
  cellctlConfig: string;
  cellsRoot: string;
  logs(): string;
  /** Cells the local provider still holds. */
  cellDirs(): string[];
  /** `controller issue-user NAME --group GROUP`: another user's cellctl configuration (its path). */
  issueUser(name: string, group: string): Promise<string>;
  stop(): Promise<void>;
}

/** `registries`: the controller's registries block (per-registry rewrites, plain HTTP), which reaches the cells. */
export async function startController(o: { insecureRegistries: string[]; registries?: Record<string, unknown>; policy?: unknown[] }): Promise<TestController> {
  const dir = mkdtempSync(join(tmpdir(), 'cello-cri-ctl-'));
  const cellsRoot = join(dir, 'cells');
  const cellctlConfig = join(dir, 'cellctl.yaml');
  const keyFile = join(dir, 'ca-key');
  writeFileSync(keyFile, randomBytes(32).toString('base64'), { mode: 0o600 });
  const controllerId = `cri-${randomBytes(3).toString('hex')}`;
  const server = `127.0.0.1:${await freePort()}`;
  const cfg = {
    controllerId,
    api: { listen: server, adminCredentials: { file: cellctlConfig, user: 'cri-admin' }, ...(o.policy ? { policy: o.policy } : {}) },
    metrics: { listen: `127.0.0.1:${await freePort()}` },
    log: { level: 'debug' },
    store: { kind: 'embedded', dir: join(dir, 'store') },
    provider: { kind: 'local', root: cellsRoot, insecureRegistries: o.insecureRegistries },
    ...(o.registries ? { registries: o.registries } : {}),
    security: { mode: 'mtls', encryptionKeyFile: keyFile },
    warmPool: [],
    timeouts: { healthSeconds: 5, bootSeconds: 60, createSeconds: 30 },
    gc: { intervalSeconds: 5 },
    pods: { retainFinishedSeconds: 300 },
  };
  const configPath = join(dir, 'controller.yaml');
  writeFileSync(configPath, stringify(cfg));
  let log = '';
  const child: ChildProcess = spawn(process.execPath, [CONTROLLER_BIN, '-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-200_000)));
  child.stderr!.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-200_000)));
  const provider = new LocalProvider({ root: cellsRoot });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await waitExit(child, { timeoutMs: 15_000, what: 'the controller' }).catch(() => {
        child.kill('SIGKILL');
        return waitExit(child, { what: 'the controller' });
      });
    }
    // Whatever a failed test left: end every cell of this controller.
    const owned = await provider.listOwned(controllerId);
    if (owned.length) await provider.terminate(owned.map((i) => i.instanceId));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      'the controller writing its admin credentials',
      () => {
        if (child.exitCode !== null) throw new Error(`controller exited ${child.exitCode}: ${log.slice(-2000)}`);
        return existsSync(cellctlConfig) && log.includes('wrote the local admin credentials');
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const issueUser = async (name: string, group: string): Promise<string> => {
    const out = join(dir, `${name}.yaml`);
    await run(process.execPath, [CONTROLLER_BIN, 'issue-user', name, '--group', group, '-c', configPath, '-o', out, '--ttl', '1h'], { timeout: 60_000 });
    return out;
  };
  return { server, cellctlConfig, cellsRoot, logs: () => log, cellDirs: () => (existsSync(cellsRoot) ? readdirSync(cellsRoot) : []), issueUser, stop };
}
