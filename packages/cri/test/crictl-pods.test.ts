// crictl (v1.34.0) against the real cello-cri CLI backed by a real controller with the local
// provider (real cell-agent processes, real runc) and a real registry: a sandbox is a cell, its
// containers are that cell's units; runp/create/start/ps/exec/stop/rm/stopp/rmp end to end, and
// what a VM per pod cannot mean refused naming the field.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { criTools, pushBusybox, pushPause, startRegistry, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Metadata } from '@grpc/grpc-js';
import { parse, stringify } from 'yaml';
import type { ExecSyncResponse } from '../src/gen/runtime/v1/api.js';
import { call, clients, crictl as runCrictl, crictlFor, deadline, startShim, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let busybox: string;
let pause: string;
let shimArgs: string[];
/** Directories of shims stopped with their state kept: removed at the end. */
const leftovers: string[] = [];

const {
  run: crictl,
  ok,
  file,
} = crictlFor(
  () => tools.crictl,
  () => shim,
);

const podConfig = (name: string, extra: Record<string, unknown> = {}) => ({
  metadata: { name, namespace: 'default', uid: `uid-${name}`, attempt: 0 },
  hostname: name,
  log_directory: join(shim.dir, 'pods', `default_${name}`),
  labels: { app: name, tier: 'test' },
  annotations: { 'example.com/note': 'kept' },
  dns_config: { servers: ['10.96.0.10'], searches: ['default.svc.cluster.local'], options: ['ndots:5'] },
  linux: {},
  ...extra,
});

/** A free TCP port on this node (bound on all addresses and released), for a sandbox's host port. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '0.0.0.0', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  busybox = await pushBusybox(registry, 'busybox:1');
  pause = await pushPause(registry);
  // The admin (system:masters) runs the main shim; group `cri-dev` may only create, get and delete
  // pods in namespace dev: no exec, no other namespace.
  controller = await startController({
    insecureRegistries: [registry.host],
    policy: [{ groups: ['cri-dev'], namespaces: ['dev'], verbs: ['get', 'list', 'watch', 'create', 'delete'] }],
  });
  shimArgs = ['--insecure-registry', registry.host, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause];
  shim = await startShim(shimArgs);
}, 30 * 60_000);

afterAll(async () => {
  await shim?.stop();
  for (const d of leftovers) rmSync(d, { recursive: true, force: true });
  await controller?.stop();
  await registry?.stop();
}, 120_000);

interface Inspectp {
  status: { id: string; state: string; network: { ip: string }; labels: Record<string, string>; annotations: Record<string, string>; metadata: { name: string } };
  info: { pod: { namespace: string; name: string }; cellId: string; dnsConfig: { servers: string[] } };
}

describe('a pod sandbox is a cell, its containers are units', () => {
  it('runp, create, start, ps, exec, stop, rm, stopp, rmp', async () => {
    const sandbox = await ok(['--timeout', '120s', 'runp', file('pod.json', podConfig('web'))]);
    expect(sandbox).toMatch(/^[a-f0-9]{64}$/);
    const podLogs = join(shim.dir, 'pods', 'default_web');

    const inspect = JSON.parse(await ok(['inspectp', sandbox])) as Inspectp;
    expect(inspect.status.state).toBe('SANDBOX_READY');
    expect(inspect.status.network.ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(inspect.status.labels).toMatchObject({ app: 'web', tier: 'test' });
    expect(inspect.status.annotations['example.com/note']).toBe('kept');
    expect(inspect.info.dnsConfig.servers).toEqual(['10.96.0.10']);
    expect(inspect.info.cellId).not.toBe('');
    expect(controller.cellDirs()).toContain(inspect.info.cellId);

    // Filters: by label, by state, by ID prefix.
    expect(await ok(['pods', '-q', '--label', 'app=web'])).toBe(sandbox);
    expect(await ok(['pods', '-q', '--label', 'app=other'])).toBe('');
    expect(await ok(['pods', '-q', '--state', 'ready'])).toBe(sandbox);
    expect(await ok(['pods', '-q', '--id', sandbox.slice(0, 12)])).toBe(sandbox);

    const ctrCfg = file('ctr.json', {
      metadata: { name: 'app', attempt: 0 },
      log_path: 'app/0.log',
      image: { image: busybox },
      command: ['sh', '-c', 'echo started; exec sleep 3600'],
      envs: [{ key: 'GREETING', value: 'hello from a cell' }],
      labels: { role: 'main' },
      linux: {},
    });
    const ctr = await ok(['--timeout', '60s', 'create', sandbox, ctrCfg, file('pod.json', podConfig('web'))]);
    expect(ctr).toMatch(/^[a-f0-9]{64}$/);
    expect(await ok(['ps', '-a', '-q', '--state', 'created'])).toBe(ctr);

    await ok(['--timeout', '60s', 'start', ctr]);
    expect(await ok(['ps', '-q', '--state', 'running'])).toBe(ctr);
    expect(await ok(['ps', '-q', '--label', 'role=main', '--pod', sandbox])).toBe(ctr);
    expect(await ok(['ps', '-q', '--label', 'role=other'])).toBe('');

    // ExecSync: output, exit codes, the environment the unit was given, a timeout that ends the call.
    expect(await ok(['exec', '-s', ctr, 'sh', '-c', 'echo $GREETING'])).toBe('hello from a cell');
    const failed = await crictl(['exec', '-s', ctr, 'sh', '-c', 'echo oops >&2; exit 3']);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toContain('oops');
    // The exit code itself, as the kubelet's exec probes read it.
    const c = clients(shim.socket);
    try {
      const r = await call<ExecSyncResponse>((cb) =>
        c.runtime.execSync({ containerId: ctr, cmd: ['sh', '-c', 'echo out; exit 3'], timeout: 10n }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(r.err).toBeUndefined();
      expect(r.res?.exitCode).toBe(3);
      expect(r.res?.stdout.toString()).toBe('out\n');
    } finally {
      c.close();
    }
    const t0 = Date.now();
    const slow = await crictl(['exec', '-s', '--timeout', '2', ctr, 'sleep', '30']);
    expect(slow.code).not.toBe(0);
    expect(slow.stderr).toMatch(/timed out after 2s|DeadlineExceeded/i);
    expect(Date.now() - t0).toBeLessThan(15_000);

    // The container's output, in the kubelet's log file in CRI format, as crictl logs reads it.
    const logPath = join(podLogs, 'app', '0.log');
    await waitFor('the log line', () => existsSync(logPath) && readFileSync(logPath, 'utf8').includes(' stdout F started\n'), { timeoutMs: 30_000, intervalMs: 250 });
    expect(readFileSync(logPath, 'utf8')).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F started\n$/);
    expect(await ok(['logs', ctr])).toBe('started');

    // A restarted shim finds the sandbox and its running container again (its records), and the
    // cell went on meanwhile.
    leftovers.push(shim.dir);
    await shim.stop({ keepState: true });
    shim = await startShim(shimArgs, { stateDir: shim.stateDir });
    expect(await ok(['pods', '-q', '--state', 'ready'])).toBe(sandbox);
    expect(await ok(['ps', '-q', '--state', 'running'])).toBe(ctr);
    expect(await ok(['exec', '-s', ctr, 'sh', '-c', 'echo $GREETING'])).toBe('hello from a cell');

    // A container that ends by itself reports its real exit code.
    const jobCfg = file('job.json', {
      metadata: { name: 'job', attempt: 0 },
      log_path: 'job/0.log',
      image: { image: busybox },
      command: ['sh', '-c', 'echo bye; exit 7'],
      linux: {},
    });
    const job = await ok(['create', '--no-pull', sandbox, jobCfg, file('pod.json', podConfig('web'))]);
    await ok(['--timeout', '60s', 'start', job]);
    const jobStatus = await waitFor(
      'the job container exited',
      async () => {
        const s = JSON.parse(await ok(['inspect', job])) as { status: { state: string; exitCode: number } };
        return s.status.state === 'CONTAINER_EXITED' ? s.status : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect(jobStatus.exitCode).toBe(7);
    // Once its output is written, an exited container's status answers at once (no wait on its log).
    const t1 = Date.now();
    await ok(['inspect', job]);
    expect(Date.now() - t1).toBeLessThan(3000);
    // Its last output was in its log file when it was reported exited.
    expect(readFileSync(join(podLogs, 'job', '0.log'), 'utf8')).toMatch(/ stdout F bye\n$/);
    await ok(['rm', job]);

    await ok(['--timeout', '60s', 'stop', '--timeout', '1', ctr]);
    const stopped = JSON.parse(await ok(['inspect', ctr])) as { status: { state: string } };
    expect(stopped.status.state).toBe('CONTAINER_EXITED');
    expect(await ok(['ps', '-q'])).toBe('');
    expect(await ok(['ps', '-a', '-q', '--state', 'exited'])).toBe(ctr);
    await ok(['rm', ctr]);
    expect(await ok(['ps', '-a', '-q'])).toBe('');

    await ok(['--timeout', '120s', 'stopp', sandbox]);
    expect((JSON.parse(await ok(['inspectp', sandbox])) as Inspectp).status.state).toBe('SANDBOX_NOTREADY');
    expect(await ok(['pods', '-q', '--state', 'notready'])).toBe(sandbox);
    // The cell ended.
    await waitFor('the cell gone', () => !controller.cellDirs().includes(inspect.info.cellId), { timeoutMs: 60_000, intervalMs: 250 });
    await ok(['rmp', sandbox]);
    expect(await ok(['pods', '-q'])).toBe('');
    // Idempotent, as the CRI asks.
    await ok(['rmp', sandbox]).catch(() => undefined);
  }, 600_000);
});

describe("a sandbox's host ports listen on this node and relay to its cell", () => {
  it("fetches the pod's web server at 127.0.0.1:HOSTPORT; a second sandbox asking for the port fails; stopp stops listening", async () => {
    const hostPort = await freePort();
    const mapping = { port_mappings: [{ container_port: 8080, host_port: hostPort }] };
    const sandbox = await ok(['--timeout', '120s', 'runp', file('hp.json', podConfig('hostport', mapping))]);
    try {
      const web = await ok([
        'create',
        '--no-pull',
        sandbox,
        file('hp-web.json', {
          metadata: { name: 'web', attempt: 0 },
          image: { image: busybox },
          command: ['sh', '-c', 'mkdir -p /www && echo "hello through the host port" > /www/index.html && exec httpd -f -p 8080 -h /www'],
          linux: {},
        }),
        file('hp.json', podConfig('hostport', mapping)),
      ]);
      await ok(['--timeout', '60s', 'start', web]);
      // From this node's loopback, as a kubelet node's hostPort is reached.
      const body = await waitFor(
        'the web server through the host port',
        async () => {
          const r = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
          return r?.status === 200 ? await r.text() : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      expect(body).toBe('hello through the host port\n');
      // The port is this sandbox's: another one asking for it fails at once, and no cell is made for it.
      const cells = controller.cellDirs().length;
      const taken = await crictl(['--timeout', '60s', 'runp', file('hp2.json', podConfig('hostport2', mapping))]);
      expect(taken.code).not.toBe(0);
      expect(taken.stderr).toContain(`config.port_mappings[0].host_port: 0.0.0.0:${hostPort}/TCP is already in use on this node`);
      expect(await ok(['pods', '-q', '--label', 'app=hostport2'])).toBe('');
      expect(controller.cellDirs().length).toBeLessThanOrEqual(cells);
    } finally {
      await ok(['--timeout', '120s', 'stopp', sandbox]);
    }
    // Stopped: nothing listens on the port any more.
    const after = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(5000) }).then(
      (r) => `answered ${r.status}`,
      (err: Error) => (err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.message,
    );
    expect(after).toBe('ECONNREFUSED');
    await ok(['rmp', sandbox]);
  }, 300_000);
});

describe('what a VM per pod cannot mean is refused, naming the field', () => {
  it('host network, PID and IPC namespaces; a host port on an address not of this node', async () => {
    for (const [ns, field] of [
      ['network', 'namespace_options.network'],
      ['pid', 'namespace_options.pid'],
      ['ipc', 'namespace_options.ipc'],
    ] as const) {
      const r = await crictl(['runp', file(`host-${ns}.json`, podConfig(`host-${ns}`, { linux: { security_context: { namespace_options: { [ns]: 2 } } } }))]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(field);
      expect(r.stderr).toMatch(/NODE .* is not supported/);
    }
    const hostIp = await crictl(['runp', file('hostip.json', podConfig('hostip', { port_mappings: [{ container_port: 80, host_port: 8080, host_ip: '192.0.2.1' }] }))]);
    expect(hostIp.stderr).toContain('config.port_mappings[0].host_ip: 192.0.2.1:8080/TCP cannot be bound: 192.0.2.1 is not an address of this node');
    const sctp = await crictl(['runp', file('sctp.json', podConfig('sctp', { port_mappings: [{ protocol: 2, container_port: 80, host_port: 8080 }] }))]);
    expect(sctp.stderr).toContain('config.port_mappings[0].protocol: an SCTP host port cannot be relayed');
    // Nothing was created for any of them.
    expect(await ok(['pods', '-q', '--label', 'tier=test', '--state', 'ready'])).toBe('');
  });

  it("host mounts, mount propagation and a privileged container in a sandbox that is not, before the pod's cell is touched", async () => {
    const sandbox = await ok(['--timeout', '120s', 'runp', file('m.json', podConfig('mounts'))]);
    try {
      const base = { metadata: { name: 'c', attempt: 0 }, image: { image: busybox }, command: ['sleep', '60'], linux: {} };
      const mount = await crictl([
        'create',
        '--no-pull',
        sandbox,
        file('mc.json', { ...base, mounts: [{ container_path: '/data', host_path: '/var/lib/data' }] }),
        file('m.json', podConfig('mounts')),
      ]);
      expect(mount.stderr).toContain('config.mounts[0]');
      expect(mount.stderr).toContain("cannot see this node's files");
      const prop = await crictl([
        'create',
        '--no-pull',
        sandbox,
        file('mp.json', { ...base, mounts: [{ container_path: '/d', host_path: '/mnt', propagation: 2 }] }),
        file('m.json', podConfig('mounts')),
      ]);
      expect(prop.stderr).toContain('config.mounts[0].propagation');
      const priv = await crictl([
        'create',
        '--no-pull',
        sandbox,
        file('mpriv.json', { ...base, linux: { security_context: { privileged: true } } }),
        file('m.json', podConfig('mounts')),
      ]);
      expect(priv.stderr).toContain('config.linux.security_context.privileged: no privileged container allowed in sandbox');
      expect(await ok(['ps', '-a', '-q', '--pod', sandbox])).toBe('');
    } finally {
      await ok(['--timeout', '120s', 'rmp', '-f', sandbox]);
    }
  }, 300_000);
});

describe('the shim is a client of the controller like any other: authenticated, and only as authorized', () => {
  it('a shim whose user may not run pods in a namespace is refused there, and may not exec where it may run pods', async () => {
    const limited = await startShim(['--insecure-registry', registry.host, '--controller-config', await controller.issueUser('cri-node', 'cri-dev'), '--sandbox-image', pause]);
    try {
      const as = (args: string[]) => runCrictl(tools.crictl, limited.socket, args);
      const denied = await as(['--timeout', '60s', 'runp', file('denied.json', podConfig('denied'))]);
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toMatch(/PermissionDenied|forbidden/i);
      expect(denied.stderr).toContain('may not create pods in namespace default');
      expect((await as(['pods', '-q'])).stdout.trim()).toBe('');

      const dev = { ...podConfig('devpod'), metadata: { name: 'devpod', namespace: 'dev', uid: 'uid-devpod', attempt: 0 } };
      const sandbox = (await as(['--timeout', '120s', 'runp', file('dev.json', dev)])).stdout.trim();
      expect(sandbox, limited.logs().slice(-2000)).toMatch(/^[a-f0-9]{64}$/);
      const ctr = (
        await as([
          '--timeout',
          '60s',
          'create',
          sandbox,
          file('devc.json', { metadata: { name: 'app', attempt: 0 }, image: { image: busybox }, command: ['sleep', '3600'], linux: {} }),
          file('dev.json', dev),
        ])
      ).stdout.trim();
      expect((await as(['--timeout', '60s', 'start', ctr])).code).toBe(0);
      const exec = await as(['exec', '-s', ctr, 'true']);
      expect(exec.code).not.toBe(0);
      expect(exec.stderr).toContain('may not exec');
      expect((await as(['--timeout', '120s', 'rmp', '-f', sandbox])).code).toBe(0);
    } finally {
      await limited.stop();
    }
  }, 300_000);

  it('a client certificate this controller never issued is refused: the runtime is not ready, and sandboxes fail', async () => {
    const other = await startController({ insecureRegistries: [] });
    // This controller's address and CA, with the other controller's admin certificate and key.
    const cfg = parse(readFileSync(controller.cellctlConfig, 'utf8')) as { users: { user: Record<string, string> }[] };
    cfg.users[0]!.user = (parse(readFileSync(other.cellctlConfig, 'utf8')) as typeof cfg).users[0]!.user;
    writeFileSync(join(shim.dir, 'foreign.yaml'), stringify(cfg), { mode: 0o600 });
    await other.stop();
    const foreign = await startShim(['--controller-config', join(shim.dir, 'foreign.yaml'), '--sandbox-image', pause]);
    try {
      const info = await runCrictl(tools.crictl, foreign.socket, ['info', '-o', 'json']);
      const ready = (JSON.parse(info.stdout) as { status: { conditions: { type: string; status: boolean; reason: string; message: string }[] } }).status.conditions.find(
        (c) => c.type === 'RuntimeReady',
      )!;
      expect(ready.status).toBe(false);
      expect(ready.reason).toBe('ControllerUnreachable');
      expect(ready.message).toContain("a client certificate this controller's CA did not issue");
      const r = await runCrictl(tools.crictl, foreign.socket, ['--timeout', '20s', 'runp', file('foreign-pod.json', podConfig('foreign'))]);
      expect(r.code).not.toBe(0);
      expect(await ok(['pods', '-q', '--label', 'app=foreign'])).toBe('');
    } finally {
      await foreign.stop();
    }
  }, 300_000);
});
