// The test harness that plays an EC2 instance's boot: the EC2 emulator (moto) only records
// instances, so for a launched instance the harness reads its user data back from the
// emulator, writes it where the cell image's first boot would, and starts the real agent
// (`cell-agent serve --bootstrap-user-data`) on a loopback port. The controller reaches that
// agent through a test-only address map (instance ID -> 127.0.0.1:port); the invented
// addresses moto reports for the instance are never contacted.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort, startImdsTestDouble, waitFor, type ImdsTestDouble } from '@cello/testkit';
import { encodeUserData, type AwsProvider } from '../../src/providers/aws/index.js';

export interface PlayedInstance {
  instanceId: string;
  address: string;
  stateDir: string;
  /** With `via: 'imds'`: the instance's metadata service (IMDS test double), e.g. to post a spot notice. */
  imds?: ImdsTestDouble;
  /** The agent's stdout so far (it prints "bootstrap listening ..." then "listening ..."). */
  output(): string;
  /** The instance ends (terminated, spot reclaimed): its agent dies. */
  kill(): Promise<void>;
}

export function agentCli(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@cello/cell-agent')), 'cli.js');
}

export class BootHarness {
  /** instance ID -> loopback address: the provider's testAgentAddressMap. */
  readonly addresses = new Map<string, string>();
  private loop: { stop: boolean; done: Promise<void> } | undefined;

  /**
   * Plays the boot of every instance this controller launches, as EC2 would run it: polls the
   * emulator for owned, running instances not booted yet and boots each.
   */
  autoBoot(provider: AwsProvider, controllerId: string, onError: (err: unknown) => void): void {
    const state = { stop: false, done: Promise.resolve() };
    state.done = (async () => {
      while (!state.stop) {
        try {
          for (const i of await provider.listOwned(controllerId)) {
            if (state.stop) break;
            if (i.state === 'running' && !this.addresses.has(i.instanceId)) await this.boot(provider, i.instanceId);
          }
        } catch (err) {
          if (!state.stop) onError(err);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    this.loop = state;
  }
  private readonly played: PlayedInstance[] = [];
  private readonly dirs: string[] = [];
  private readonly imdses: ImdsTestDouble[] = [];

  addressOf = (instanceId: string): string | undefined => this.addresses.get(instanceId);

  /**
   * Boots the instance: its user data from EC2, the real agent, a loopback port. `via: 'imds'`
   * serves the user data from an IMDSv2 test double (as on EC2: `--user-data-url`), else a file.
   */
  constructor(private readonly agentArgs: string[] = []) {}

  async boot(provider: AwsProvider, instanceId: string, o: { via?: 'file' | 'imds' } = {}): Promise<PlayedInstance> {
    const ud = await provider.userData(instanceId);
    const dir = await mkdtemp(join(tmpdir(), 'cello-instance-'));
    this.dirs.push(dir);
    const udFile = join(dir, 'user-data.json');
    await writeFile(udFile, encodeUserData(ud), { mode: 0o600 });
    let imds: ImdsTestDouble | undefined;
    if (o.via === 'imds') {
      imds = await startImdsTestDouble({ '/latest/user-data': encodeUserData(ud).toString('utf8') });
      this.imdses.push(imds);
    }
    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    this.addresses.set(instanceId, address);
    const child: ChildProcess = spawn(
      process.execPath,
      [
        agentCli(),
        'serve',
        '--listen',
        address,
        '--state-dir',
        join(dir, 'state'),
        ...(imds ? ['--user-data-url', imds.url] : ['--bootstrap-user-data', udFile]),
        '--cgroup-parent',
        `/cello-test/${ud.cellId}`,
        ...this.agentArgs,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CELLO_LOG_LEVEL: process.env['LOG_LEVEL'] ?? 'warn' } },
    );
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    await waitFor(
      `agent for ${instanceId} to listen for its bootstrap`,
      () => {
        if (child.exitCode !== null) throw new Error(`agent exited ${child.exitCode}: ${err}`);
        return out.includes('bootstrap listening');
      },
      { timeoutMs: 30_000 },
    );
    const p: PlayedInstance = {
      instanceId,
      address,
      stateDir: join(dir, 'state'),
      ...(imds ? { imds } : {}),
      output: () => out,
      kill: async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await exited;
        endInstance(dir, ud.cellId);
      },
    };
    this.played.push(p);
    return p;
  }

  async close(): Promise<void> {
    if (this.loop) {
      this.loop.stop = true;
      await this.loop.done;
    }
    const errors: string[] = [];
    for (const p of this.played) await p.kill().catch((e: Error) => errors.push(e.message));
    for (const i of this.imdses) await i.stop().catch((e: Error) => errors.push(e.message));
    for (const d of this.dirs) await rm(d, { recursive: true, force: true }).catch((e: Error) => errors.push(e.message));
    if (errors.length) throw new Error(`harness cleanup: ${errors.join('; ')}`);
  }
}

/**
 * What the end of a real instance does for free: its containers and mounts go. The agent's
 * units outlive the agent by design (they are re-adopted on restart), so the harness stops
 * them under the agent's runc root and unmounts what is left under the instance's directory.
 */
export function endInstance(dir: string, cellId: string): void {
  const root = join(dir, 'state', 'runc');
  if (existsSync(root)) {
    let ids: string[] = [];
    try {
      ids = execFileSync('runc', ['--root', root, 'list', '-q'], { encoding: 'utf8', timeout: 10_000 }).split('\n').filter(Boolean);
    } catch {
      ids = [];
    }
    for (const id of ids) {
      try {
        execFileSync('runc', ['--root', root, 'delete', '-f', id], { stdio: 'ignore', timeout: 10_000 });
      } catch {
        // already gone
      }
    }
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && m.startsWith(dir))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10_000 });
    } catch {
      // not mounted any more
    }
  }
  removeCgroups(cellId);
}

/** Removes the cell's (empty) cgroups under /cello-test/<cellId> in every hierarchy. */
function removeCgroups(cellId: string): void {
  for (const h of readdirSync('/sys/fs/cgroup')) {
    const top = join('/sys/fs/cgroup', h, 'cello-test', cellId);
    if (!existsSync(top)) continue;
    const dirs: string[] = [];
    const walk = (d: string) => {
      dirs.push(d);
      for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
    };
    try {
      walk(top);
    } catch {
      continue;
    }
    for (const d of dirs.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // still has a process, or gone already
      }
    }
  }
}
