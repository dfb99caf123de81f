// A real single-machine Cello for end-to-end tests: a registry with the busybox fixture, the
// `controller` daemon (dist) with the local provider (real cell-agent processes, real runc),
// and `cellctl` (dist) run as a child process, exactly as a user would.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Metadata, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { stringify } from 'yaml';
import { ApplyPodRequest } from '@cello/proto/cell';
import { ControllerClient, ListEventsRequest, type Cell, type PodObject, type ClusterEvent } from '@cello/proto/controller';
import { freePort, waitExit, waitFor, startRegistry, pushBusybox, type RegistryServer } from '@cello/testkit';
import { LocalProvider } from '../../src/providers/local/local.js';
import { readConfig, resolveContext } from '../../src/cellctl/config.js';
import { apiChannelCredentials } from '../../src/api/auth/client.js';

const pkgRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CONTROLLER_BIN = join(pkgRoot, 'dist', 'bin', 'controller.js');
export const CELLCTL_BIN = join(pkgRoot, 'dist', 'bin', 'cellctl.js');

export interface Registry {
  server: RegistryServer;
  image: string;
}

export async function startFixtureRegistry(): Promise<Registry> {
  const server = await startRegistry();
  const image = await pushBusybox(server);
  return { server, image };
}

/**
 * A Secret `creds` holding `secret` and a pod `name` whose one container reads it into $TOKEN
 * and runs `script` (IMAGE stands for the registry's image, replaced by Cluster.manifest): the
 * pod the tests that follow a secret through the controller share.
 */
export function podWithSecret(name: string, secret: string, script: string): string {
  return `apiVersion: v1
kind: Secret
metadata: { name: creds }
stringData: { token: ${secret} }
---
apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    command: ["sh", "-c", ${JSON.stringify(script)}]
    env:
    - name: TOKEN
      valueFrom: { secretKeyRef: { name: creds, key: token } }
`;
}

/** Every form a secret value could take in a JSON record or a file: as is, base64 (bytes fields), and the start of its base64 inside a longer run. */
export function secretForms(secret: string): string[] {
  const b64 = Buffer.from(secret).toString('base64');
  return [secret, b64, b64.slice(0, 24)];
}

/** Whether any file below `dir` holds any of `needles` (e.g. secretForms). */
export function filesHold(dir: string, needles: string[]): boolean {
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    if (statSync(p).isDirectory() ? filesHold(p, needles) : needles.some((x) => readFileSync(p).includes(x))) return true;
  }
  return false;
}

/** GET / on 127.0.0.1:port (a port-forward's local end), the body; 5 s without an answer fails. */
export function httpGet(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/', timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (b: Buffer) => (body += b.toString()));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Runs the `controller` CLI (dist) to its end, with a deadline: backup, restore, preflight, issue-user. */
export function controllerCli(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CONTROLLER_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`controller ${args.join(' ')} timed out after ${timeoutMs} ms; stderr=${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? -1, stdout, stderr });
    });
  });
}

export interface ClusterOptions {
  registry: Registry;
  warm?: number;
  healthSeconds?: number;
  store?: { kind: 'embedded' } | { kind: 'etcd'; endpoints: string[]; prefix?: string };
  gcIntervalSeconds?: number;
  retainFinishedSeconds?: number;
  /** pods.keepLogBytes / pods.keepLogsSeconds: the logs kept when a pod ends. */
  keepLogBytes?: number;
  keepLogsSeconds?: number;
  controllerId?: string;
  /** mTLS to the agents with the controller's CA (default); false: --insecure-dev agents. */
  mtls?: boolean;
  /** A second replica of `peer`: same controller ID, cells root and CA key (etcd store). */
  peer?: Cluster;
  /** Extra `security` settings (mTLS), e.g. certificate lifetimes. */
  security?: Record<string, unknown>;
  /** Extra `api` settings (policy). */
  api?: Record<string, unknown>;
  /** Registries besides the fixture's that the cells reach over plain HTTP. */
  insecureRegistries?: string[];
  /** The `registries:` block (per-registry CAs, client certificates, mirrors, rewrites). */
  registries?: Record<string, unknown>;
  /** Images the warm cells pre-pull (warmPool[].prePull). */
  prePull?: string[];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class Cluster {
  readonly dir: string;
  readonly cellsRoot: string;
  readonly configPath: string;
  apiPort = 0;
  metricsPort = 0;
  controller?: ChildProcess;
  controllerLog = '';
  readonly provider: LocalProvider;
  readonly controllerId: string;
  private client?: ControllerClient;

  constructor(readonly o: ClusterOptions) {
    this.dir = mkdtempSync(join(tmpdir(), 'cello-ctl-e2e-'));
    this.cellsRoot = o.peer?.cellsRoot ?? join(this.dir, 'cells');
    this.configPath = join(this.dir, 'controller.yaml');
    this.controllerId = o.peer?.controllerId ?? o.controllerId ?? `e2e-${Math.random().toString(36).slice(2, 8)}`;
    this.provider = new LocalProvider({ root: this.cellsRoot });
  }

  /** The embedded store's directory (when the store is embedded). */
  get storeDir(): string {
    return join(this.dir, 'store');
  }

  /** The cellctl configuration the controller writes for the test's admin (api.adminCredentials). */
  get cellctlConfig(): string {
    return join(this.dir, 'cellctl.yaml');
  }

  /** The admin's credentials for the API, as cellctl would use them. */
  apiCredentials(): ChannelCredentials {
    const cfg = readConfig(this.cellctlConfig);
    if (!cfg) throw new Error(`${this.cellctlConfig}: not written yet (start the controller first)`);
    return apiChannelCredentials(resolveContext(cfg, this.cellctlConfig).credentials!);
  }

  get server(): string {
    return `127.0.0.1:${this.apiPort}`;
  }

  async writeConfig(): Promise<void> {
    if (!this.apiPort) this.apiPort = await freePort();
    const metricsPort = (this.metricsPort ||= await freePort());
    const cfg = {
      controllerId: this.controllerId,
      api: { listen: this.server, adminCredentials: { file: this.cellctlConfig, user: 'e2e-admin' }, ...(this.o.api ?? {}) },
      metrics: { listen: `127.0.0.1:${metricsPort}` },
      log: { level: 'debug' },
      store: this.o.store?.kind === 'etcd' ? this.o.store : { kind: 'embedded', dir: this.storeDir },
      provider: {
        kind: 'local',
        root: this.cellsRoot,
        insecureRegistries: [...(this.o.registry.server.url.startsWith('https:') ? [] : [this.o.registry.server.host]), ...(this.o.insecureRegistries ?? [])],
      },
      ...(this.o.registries ? { registries: this.o.registries } : {}),
      // The key also seals the CA that serves the API's TLS, insecure-dev agents or not.
      security:
        this.o.mtls === false ? { mode: 'insecure-dev', encryptionKeyFile: this.keyFile() } : { mode: 'mtls', encryptionKeyFile: this.keyFile(), ...(this.o.security ?? {}) },
      warmPool: this.o.warm ? [{ instanceType: 'local.nano', size: this.o.warm, ...(this.o.prePull ? { prePull: this.o.prePull } : {}) }] : [],
      timeouts: { healthSeconds: this.o.healthSeconds ?? 5, bootSeconds: 60, createSeconds: 30 },
      gc: { intervalSeconds: this.o.gcIntervalSeconds ?? 30 },
      pods: {
        retainFinishedSeconds: this.o.retainFinishedSeconds ?? 300,
        ...(this.o.keepLogBytes !== undefined ? { keepLogBytes: this.o.keepLogBytes } : {}),
        ...(this.o.keepLogsSeconds !== undefined ? { keepLogsSeconds: this.o.keepLogsSeconds } : {}),
      },
    };
    writeFileSync(this.configPath, stringify(cfg));
  }

  keyFile(): string {
    if (this.o.peer) return this.o.peer.keyFile();
    const p = join(this.dir, 'ca-key');
    if (!existsSync(p)) writeFileSync(p, randomBytes(32).toString('base64'), { mode: 0o600 });
    return p;
  }

  async start(): Promise<void> {
    await this.writeConfig();
    this.controllerLog = '';
    const child = spawn(process.execPath, [CONTROLLER_BIN, '-c', this.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.controller = child;
    child.stdout!.on('data', (b: Buffer) => (this.controllerLog += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (this.controllerLog += b.toString()));
    this.client?.close();
    this.client = undefined;
    await waitFor(
      'controller API',
      async () => {
        if (child.exitCode !== null) throw new Error(`controller exited ${child.exitCode}: ${this.controllerLog.slice(-2000)}`);
        // The controller writes the admin's credentials once it listens (a restart renews them).
        if (!this.client) {
          const cfg = existsSync(this.cellctlConfig) && this.controllerLog.includes('wrote the local admin credentials') ? readConfig(this.cellctlConfig) : undefined;
          if (!cfg) return undefined;
          this.client = new ControllerClient(this.server, this.apiCredentials());
        }
        return (await this.call<{ version: string }>('version', {}, 1000).catch(() => undefined))?.version;
      },
      { timeoutMs: 20_000, intervalMs: 100 },
    );
  }

  /** kill -9: no shutdown code runs. */
  async kill9(): Promise<void> {
    const c = this.controller;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGKILL');
    await waitExit(c, { what: 'the controller' });
  }

  async stopController(): Promise<void> {
    const c = this.controller;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    await waitExit(c, { timeoutMs: 15_000, what: 'the controller' }).catch(() => {
      c.kill('SIGKILL');
      return waitExit(c, { what: 'the controller' });
    });
  }

  call<T>(method: string, req: unknown, timeoutMs = 10_000): Promise<T> {
    const client = this.client!;
    return new Promise((res, rej) => {
      const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!;
      fn.call(client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, r: T) => (err ? rej(err) : res(r)));
    });
  }

  pod(name: string): Promise<PodObject> {
    return this.call<PodObject>('getPod', { pod: { namespace: 'default', name } });
  }

  async cells(): Promise<Cell[]> {
    return (await this.call<{ cells: Cell[] }>('listCells', {})).cells;
  }

  async events(name: string): Promise<ClusterEvent[]> {
    return (await this.call<{ events: ClusterEvent[] }>('listEvents', ListEventsRequest.fromPartial({ pod: { namespace: 'default', name } }))).events;
  }

  /** Waits until the pod satisfies `pred`; fails with the pod's state and the controller's log tail. */
  async waitPod(name: string, what: string, pred: (p: PodObject) => boolean, timeoutMs = 60_000): Promise<PodObject> {
    try {
      return await waitFor(
        `pod ${name} ${what}`,
        async () => {
          const p = await this.pod(name).catch(() => undefined);
          return p && pred(p) ? p : undefined;
        },
        { timeoutMs, intervalMs: 100 },
      );
    } catch (err) {
      const p = await this.pod(name).catch(() => undefined);
      throw new Error(
        `${(err as Error).message}\npod: ${JSON.stringify(p?.status)}\nevents: ${JSON.stringify(await this.events(name).catch(() => []))}\nlog tail: ${this.controllerLog
          .split('\n')
          .filter((l) => !l.includes('"level":20'))
          .slice(-15)
          .join('\n')}`,
      );
    }
  }

  /** The controller's cello_leader gauge, from its /metrics endpoint. */
  async isLeader(): Promise<boolean> {
    return /^cello_leader 1$/m.test(await this.metricsText());
  }

  /** A sample of the controller's /metrics (0 when absent), e.g. metric('cello_prepull_images_total', { result: 'hit' }). */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const want = Object.entries(labels)
      .map(([k, v]) => `${k}="${v}"`)
      .join(',');
    const line = (await this.metricsText()).split('\n').find((l) => l.startsWith(want ? `${name}{${want}} ` : `${name} `));
    return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  }

  async metricsText(): Promise<string> {
    const port = this.metricsPort;
    return new Promise<string>((res, rej) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/metrics', timeout: 3000 }, (r) => {
        let b = '';
        r.on('data', (d: Buffer) => (b += d.toString()));
        r.on('end', () => res(b));
      });
      req.on('error', rej);
      req.end();
    });
  }

  /** Runs cellctl to its end; `input` is written to its stdin (e.g. for `apply -f -`). */
  cellctl(args: string[], o: { timeoutMs?: number; env?: Record<string, string>; input?: string } = {}): Promise<RunResult> {
    return new Promise((resolvePromise, reject) => {
      const child = spawn(process.execPath, [CELLCTL_BIN, ...args], {
        env: { ...process.env, CELLO_CONTROLLER: this.server, CELLO_CONFIG: this.cellctlConfig, ...(o.env ?? {}) },
        stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      });
      if (o.input !== undefined) child.stdin!.end(o.input);
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
      child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`cellctl ${args.join(' ')} timed out after ${o.timeoutMs ?? 30_000} ms; stdout=${stdout} stderr=${stderr}`));
      }, o.timeoutMs ?? 30_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolvePromise({ code: code ?? -1, stdout, stderr });
      });
    });
  }

  /** Starts a long-running cellctl (port-forward, logs -f); the caller kills it. */
  spawnCellctl(args: string[], o: { stdin?: boolean } = {}): ChildProcess {
    return spawn(process.execPath, [CELLCTL_BIN, ...args], {
      env: { ...process.env, CELLO_CONTROLLER: this.server, CELLO_CONFIG: this.cellctlConfig },
      stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
  }

  manifest(name: string, body: string): string {
    const p = join(this.dir, `${name}.yaml`);
    writeFileSync(p, body.replaceAll('IMAGE', this.o.registry.image));
    return p;
  }

  /** The agent process of a cell (from the local provider's instance file). */
  agentPid(cellId: string): number {
    const f = JSON.parse(readFileSync(join(this.cellsRoot, cellId, 'instance.json'), 'utf8')) as { pid: number };
    return f.pid;
  }

  /** What a cell's agent was last sent in ApplyPod (it keeps it, 0600, as pod.pb in its state dir). */
  appliedOnCell(cellId: string): ApplyPodRequest {
    const find = (dir: string): string | undefined => {
      for (const n of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, n.name);
        if (n.isFile() && n.name === 'pod.pb') return p;
        const hit = n.isDirectory() ? find(p) : undefined;
        if (hit) return hit;
      }
      return undefined;
    };
    const root = join(this.cellsRoot, cellId);
    const file = existsSync(root) ? find(root) : undefined;
    if (!file) throw new Error(`no pod.pb under ${root}`);
    return ApplyPodRequest.decode(readFileSync(file));
  }

  /** Cell dirs the local provider still holds. */
  cellDirs(): string[] {
    return existsSync(this.cellsRoot) ? readdirSync(this.cellsRoot) : [];
  }

  async stop(): Promise<void> {
    await this.stopController();
    this.client?.close();
    // Whatever a failed test left: end every cell of this cluster.
    const owned = await this.provider.listOwned(this.controllerId);
    if (owned.length) await this.provider.terminate(owned.map((i) => i.instanceId));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
