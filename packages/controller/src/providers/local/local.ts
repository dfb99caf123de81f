// The local provider, the embedded default: each cell is a `cell-agent serve` process on this
// machine with its own state dir (and so its own runc root), loopback port and certificate; as
// root, its pods also get their own network namespace on the cello0 bridge. Agents are started
// in their own session so they outlive a controller that is killed: a restarted controller
// finds them again through the instance files under the provider's root, and the garbage
// collector ends the ones the store does not know.
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdir, readFile, rm, rmdir, writeFile, rename } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { arch as hostArch, availableParallelism, freemem, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from '@cello/proto';
import { catalogTypes, localCatalog } from '../../catalog/catalog.js';
import {
  CapacityError,
  UnknownInstanceTypeError,
  type CellProvider,
  type InstanceInfo,
  type InstanceType,
  type LaunchRequest,
  type LaunchedInstance,
  type ProviderCapacity,
} from '../provider.js';
import { allocateSlot, createCellNet, deleteCellNet, netNames, releaseSlot } from './netns.js';

const run = promisify(execFile);

export const TAG_CONTROLLER = 'cello.io/controller-id';

export interface CellCertificate {
  certPem: string;
  keyPem: string;
  caPem: string;
}

export interface LocalProviderOptions {
  /** Directory holding one subdirectory per cell. */
  root: string;
  /** Command that runs the agent; default: node + @cello/cell-agent's dist/cli.js. */
  agentCommand?: string[];
  /** Registries the agents may reach over plain HTTP (host:port). */
  insecureRegistries?: string[];
  /**
   * Issues the cell's certificate; written (mode 0600) into the cell's dir, never passed on a
   * command line. Without it the agents run with --insecure-dev (development and tests only).
   */
  issueCertificate?: (cellId: string, sans: string[]) => Promise<CellCertificate>;
  /** netns: own network namespace per cell (needs root); host: share the host's. Default auto. */
  network?: 'auto' | 'netns' | 'host';
  /** With netns: masquerade each cell's traffic off the cello0 bridge (pods reach what the host reaches). Default true. */
  outboundNAT?: boolean;
  /** Most cells at once; launches beyond fail with CapacityError. */
  maxCells?: number;
  /**
   * Image cache shared by every cell of this provider (the cells share a machine, and the puller
   * locks across processes), so a pod on a fresh cell starts from cached layers. Default
   * ROOT/.images; false gives each cell its own, as separate machines have.
   */
  imageCache?: string | false;
  /** Extra arguments for `cell-agent serve`. */
  agentArgs?: string[];
  types?: InstanceType[];
}

interface InstanceFile {
  instanceId: string;
  cellId: string;
  instanceType: string;
  spot: boolean;
  tags: Record<string, string>;
  launchedAt: string;
  port: number;
  pid?: number;
  net?: { netns: string; hostVeth: string; address: string; slot: number };
  terminating?: boolean;
}

/**
 * What of the controller's environment a local agent gets: only what a program needs to run
 * (PATH for runc/nsenter/ip, locale, time zone, temp dir) and the agent's own knobs. The
 * controller's environment holds its secrets — the CA's sealing key (security.encryptionKeyEnv),
 * cloud credentials, kubeconfig tokens — and an agent is a cell: on AWS it would be another
 * machine that never sees them, and here its children (runc, the units' shells) would inherit
 * them. HOME and NODE_OPTIONS stay behind too: the agent reads no user config, and its Node
 * flags belong in provider.local.agentCommand.
 */
export const AGENT_ENV_ALLOWED = ['PATH', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TMPDIR', 'CELLO_LOG_LEVEL', 'CELLO_PULL_CHUNK'] as const;

export function agentEnvironment(parent: NodeJS.ProcessEnv, cellId: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const k of AGENT_ENV_ALLOWED) if (parent[k] !== undefined) env[k] = parent[k];
  env['PATH'] ??= '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  env['CELLO_CELL_ID'] = cellId;
  return env;
}

function defaultAgentCommand(): string[] {
  const require = createRequire(import.meta.url);
  // The package's main entry is dist/index.js; the CLI sits beside it.
  const main = require.resolve('@cello/cell-agent');
  return [process.execPath, join(dirname(main), 'cli.js')];
}

function alive(pid: number | undefined, cellId: string): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A recycled PID belongs to someone else: the agent's command line names its cell dir.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(cellId);
  } catch {
    return false;
  }
}

/** MemAvailable from /proc/meminfo (what can be given out without swapping), in MiB. */
function memAvailableMiB(): number | undefined {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Math.floor(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

export class LocalProvider implements CellProvider {
  /** The network namespace a cell gets (when cells have their own), for leftover checks. */
  static netnsOf(cellId: string): string {
    return netNames(cellId, 0).netns;
  }

  readonly name = 'local';
  /** Local cells get their certificate at launch, so no token bootstrap is needed. */
  readonly needsBootstrap = false;
  private readonly types: InstanceType[];
  private readonly useNetns: boolean;

  constructor(private readonly opts: LocalProviderOptions) {
    // A local cell is a process on this host: whatever the catalog says, it runs this host's architecture.
    const arch = localArchitecture();
    this.types = (opts.types ?? catalogTypes(localCatalog())).map((t) => ({ ...t, arch }));
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    const mode = opts.network ?? 'auto';
    if (mode === 'netns' && !root) throw new Error('provider.local.network: netns needs root');
    this.useNetns = mode === 'netns' || (mode === 'auto' && root);
  }

  async architectures(): Promise<Array<InstanceType['arch']>> {
    return [localArchitecture()];
  }

  async instanceTypes(): Promise<InstanceType[]> {
    return this.types.map((t) => ({ ...t }));
  }

  private dir(cellId: string): string {
    if (!/^[A-Za-z0-9._-]+$/.test(cellId)) throw new Error(`cellId: "${cellId}" is not a safe name`);
    return join(this.opts.root, cellId);
  }

  private async readInstance(cellId: string): Promise<InstanceFile | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir(cellId), 'instance.json'), 'utf8')) as InstanceFile;
    } catch {
      return undefined;
    }
  }

  private async writeInstance(f: InstanceFile): Promise<void> {
    const p = join(this.dir(f.cellId), 'instance.json');
    await writeFile(`${p}.tmp`, JSON.stringify(f, null, 2));
    await rename(`${p}.tmp`, p);
  }

  /**
   * The agent's per-boot files (FIFOs, control files, staged subPath mounts) under /run, as on
   * a real cell, never in the world-writable /dev/shm (the agent refuses a planted dir there);
   * named here so terminate can remove them.
   */
  private runDir(cellId: string): string {
    return join('/run/cello/local', cellId);
  }

  private listCellIds(): string[] {
    if (!existsSync(this.opts.root)) return [];
    return readdirSync(this.opts.root).filter((n) => existsSync(join(this.opts.root, n, 'instance.json')));
  }

  async launch(req: LaunchRequest): Promise<LaunchedInstance> {
    const type = this.types.find((t) => t.name === req.instanceType);
    if (!type) throw new UnknownInstanceTypeError(`instanceType: "${req.instanceType}" is not a local instance type`, req.instanceType);
    if (this.opts.maxCells !== undefined && this.listCellIds().length >= this.opts.maxCells) {
      throw new CapacityError(`local provider is at its limit of ${this.opts.maxCells} cells`, req.instanceType);
    }
    const dir = this.dir(req.cellId);
    const existing = await this.readInstance(req.cellId);
    // Launch is idempotent per cell: a controller that died mid-launch and retries gets the same instance.
    if (existing && alive(existing.pid, req.cellId)) return { instanceId: existing.instanceId, spot: existing.spot };
    await mkdir(join(dir, 'state'), { recursive: true, mode: 0o700 });
    const port = await freePort();
    const f: InstanceFile = {
      instanceId: `local-${req.cellId.replace(/^cell-/, '')}`,
      cellId: req.cellId,
      instanceType: req.instanceType,
      spot: req.spot,
      tags: req.tags,
      launchedAt: new Date().toISOString(),
      port,
    };
    await this.writeInstance(f);
    const args = [
      'serve',
      '--listen',
      `127.0.0.1:${port}`,
      '--state-dir',
      join(dir, 'state'),
      '--run-dir',
      this.runDir(req.cellId),
      '--cell-id',
      req.cellId,
      '--cgroup-parent',
      `/cello/${req.cellId}`,
    ];
    if (this.opts.issueCertificate) {
      const cert = await this.opts.issueCertificate(req.cellId, [req.cellId, '127.0.0.1', 'localhost']);
      const tls = join(dir, 'tls');
      await mkdir(tls, { recursive: true, mode: 0o700 });
      await writeFile(join(tls, 'cell.crt'), cert.certPem, { mode: 0o600 });
      await writeFile(join(tls, 'cell.key'), cert.keyPem, { mode: 0o600 });
      await writeFile(join(tls, 'ca.crt'), cert.caPem, { mode: 0o600 });
      args.push('--tls-cert', join(tls, 'cell.crt'), '--tls-key', join(tls, 'cell.key'), '--tls-ca', join(tls, 'ca.crt'));
    } else {
      args.push('--insecure-dev');
    }
    for (const r of this.opts.insecureRegistries ?? []) args.push('--insecure-registry', r);
    // The `registries:` block reaches a local cell as it reaches a remote one: ConfigureRegistries
    // before the cell is Ready (reconcile/cell-lifecycle.ts), never on a command line.
    if (this.opts.imageCache !== false) args.push('--image-cache', this.opts.imageCache ?? join(this.opts.root, '.images'));
    if (this.useNetns) {
      const slot = allocateSlot(netNames(req.cellId, 0).netns);
      const { netns, hostVeth, address } = netNames(req.cellId, slot);
      f.net = { netns, hostVeth, address, slot };
      await this.writeInstance(f);
      const net = await createCellNet(req.cellId, slot, { outboundNat: this.opts.outboundNAT ?? true });
      args.push('--pod-netns', net.path);
    }
    args.push(...(this.opts.agentArgs ?? []));
    const log = openSync(join(dir, 'agent.log'), 'a');
    try {
      const [cmd, ...pre] = this.opts.agentCommand ?? defaultAgentCommand();
      const child = spawn(cmd!, [...pre, ...args], {
        detached: true,
        stdio: ['ignore', log, log],
        env: agentEnvironment(process.env, req.cellId),
      });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
      child.unref();
      f.pid = child.pid;
    } catch (err) {
      // Nothing of a failed launch may stay behind (netns, dirs).
      closeSync(log);
      await this.terminateOne(f).catch(() => undefined);
      throw err;
    }
    closeSync(log);
    await this.writeInstance(f);
    return { instanceId: f.instanceId, spot: f.spot };
  }

  private info(f: InstanceFile): InstanceInfo {
    const up = alive(f.pid, f.cellId);
    return {
      instanceId: f.instanceId,
      state: f.terminating ? 'shutting-down' : up ? 'running' : f.pid ? 'stopped' : 'pending',
      agentAddress: `127.0.0.1:${f.port}`,
      tags: { ...f.tags },
      instanceType: f.instanceType,
      launchedAt: new Date(f.launchedAt),
      spot: f.spot,
      zone: 'local',
    };
  }

  private async all(): Promise<InstanceFile[]> {
    const out: InstanceFile[] = [];
    for (const id of this.listCellIds()) {
      const f = await this.readInstance(id);
      if (f) out.push(f);
    }
    return out;
  }

  async describe(instanceIds: string[]): Promise<InstanceInfo[]> {
    const want = new Set(instanceIds);
    return (await this.all()).filter((f) => want.has(f.instanceId)).map((f) => this.info(f));
  }

  async listOwned(controllerId: string): Promise<InstanceInfo[]> {
    return (await this.all()).filter((f) => f.tags[TAG_CONTROLLER] === controllerId).map((f) => this.info(f));
  }

  /**
   * The host's resources and what is in use: cells that are not ending count against maxCells
   * (else as many of the smallest type as memory holds); memory in use is the host's (MemAvailable,
   * so what the cells' processes really use, and everything else on the machine). CPU is shared
   * and compressible among cells on one host, as among pods on a kubelet's node: all of it is
   * offered, and it does not bound the number of cells.
   */
  async capacity(): Promise<ProviderCapacity> {
    const cells = (await this.all()).filter((f) => !f.terminating);
    const totalMiB = Math.floor(totalmem() / 2 ** 20);
    const availMiB = memAvailableMiB() ?? Math.floor(freemem() / 2 ** 20);
    const smallest = Math.min(...this.types.map((t) => t.memoryMiB));
    return {
      instances: { limit: this.opts.maxCells ?? Math.max(1, Math.floor(totalMiB / smallest)), used: cells.length },
      sharedCpus: availableParallelism(),
      memoryMiB: { limit: totalMiB, used: Math.max(0, totalMiB - availMiB) },
      source: 'host',
    };
  }

  async terminate(instanceIds: string[]): Promise<void> {
    const want = new Set(instanceIds);
    const files = (await this.all()).filter((f) => want.has(f.instanceId));
    await Promise.all(files.map((f) => this.terminateOne(f)));
  }

  private async terminateOne(f: InstanceFile): Promise<void> {
    f.terminating = true;
    await this.writeInstance(f);
    const dir = this.dir(f.cellId);
    if (f.pid && alive(f.pid, f.cellId)) {
      // The agent's process group: the agent and anything it started outside runc.
      try {
        process.kill(-f.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const deadline = Date.now() + 5000;
      while (alive(f.pid, f.cellId) && Date.now() < deadline) await sleep(50);
      try {
        process.kill(-f.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      // A killed agent may still be removing its run directory (its graceful stop was cut short):
      // removing the same tree at the same time fails ENOTEMPTY, so it must be gone first.
      const killed = Date.now() + 5000;
      while (alive(f.pid, f.cellId) && Date.now() < killed) await sleep(50);
    }
    await cleanupCellDir(dir);
    // A dead agent's staged subPath mounts show volume (even hostPath) contents: unmount first.
    await unmountUnder(this.runDir(f.cellId));
    // Retried: what the agent's units left may still be going away (a runc container's last writes).
    await rm(this.runDir(f.cellId), { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    await removeCgroups(`cello/${f.cellId}`);
    if (f.net) {
      await deleteCellNet(f.net);
      releaseSlot(f.net.slot, f.net.netns);
    }
    await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }

  async close(): Promise<void> {
    // Cells outlive the controller by design; nothing to release here.
  }
}

/**
 * What a dead agent may leave behind in its cell dir: runc containers (processes, cgroups)
 * and mounts (overlay rootfs, emptyDir tmpfs). Found by looking, not by trusting the agent's
 * layout, so a crashed agent leaves nothing either.
 */
export async function cleanupCellDir(dir: string): Promise<void> {
  // runc roots: directories whose children hold a runc state.json.
  for (const runcRoot of findRuncRoots(dir)) {
    let ids: string[] = [];
    try {
      ids = readdirSync(runcRoot).filter((n) => existsSync(join(runcRoot, n, 'state.json')));
    } catch {
      ids = [];
    }
    for (const id of ids) {
      await run('runc', ['--root', runcRoot, 'kill', id, 'KILL'], { timeout: 10_000 }).catch(() => undefined);
      await run('runc', ['--root', runcRoot, 'delete', '--force', id], { timeout: 10_000 }).catch(() => undefined);
    }
  }
  // Processes rooted inside the cell (containers runc no longer knows about).
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const root = readlinkSync(`/proc/${p}/root`);
      if (root === dir || root.startsWith(`${dir}/`)) process.kill(Number(p), 'SIGKILL');
    } catch {
      /* gone or not ours to read */
    }
  }
  await unmountUnder(dir);
}

function findRuncRoots(dir: string, depth = 0): string[] {
  if (depth > 4 || !existsSync(dir)) return [];
  const out: string[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  if (entries.some((e) => existsSync(join(dir, e, 'state.json')) && !existsSync(join(dir, e, 'config.json')))) out.push(dir);
  for (const e of entries) {
    if (e === 'rootfs' || e === 'blobs' || e === 'layers') continue;
    const p = join(dir, e);
    try {
      if (readdirSync(p)) out.push(...findRuncRoots(p, depth + 1));
    } catch {
      /* not a directory */
    }
  }
  return out;
}

/** This host's architecture, the only one local cells have. */
export function localArchitecture(): InstanceType['arch'] {
  const a = hostArch();
  if (a === 'x64') return 'amd64';
  if (a === 'arm64') return 'arm64';
  throw new Error(`local provider: this host's architecture ${a} is neither amd64 nor arm64`);
}

/** Kills what is left in the cell's cgroups (every hierarchy) and removes them, deepest first. */
export async function removeCgroups(rel: string): Promise<void> {
  const roots: string[] = [];
  try {
    for (const h of readdirSync('/sys/fs/cgroup')) roots.push(join('/sys/fs/cgroup', h, rel));
  } catch {
    return;
  }
  roots.push(join('/sys/fs/cgroup', rel));
  for (const root of roots) {
    if (!existsSync(root)) continue;
    const dirs: string[] = [];
    const walk = (d: string) => {
      dirs.push(d);
      try {
        for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
      } catch {
        /* raced */
      }
    };
    walk(root);
    for (const d of dirs.reverse()) {
      try {
        for (const pid of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* none */
      }
      for (let i = 0; i < 20; i++) {
        await rmdir(d).catch(() => undefined);
        if (!existsSync(d)) break;
        await sleep(50);
      }
    }
  }
}

export async function unmountUnder(dir: string): Promise<void> {
  for (let pass = 0; pass < 3; pass++) {
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => !!m && (m === dir || m.startsWith(`${dir}/`)))
      .map((m) => m.replace(/\\040/g, ' '));
    if (mounts.length === 0) return;
    // Deepest first.
    mounts.sort((a, b) => b.length - a.length);
    for (const m of mounts) await run('umount', ['-l', m], { timeout: 10_000 }).catch(() => undefined);
  }
}

export function randomToken(): string {
  return randomBytes(24).toString('base64url');
}
