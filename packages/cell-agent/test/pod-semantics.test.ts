// Kubelet pod semantics with real runc units and a real registry: stop signals (the container's
// lifecycle.stopSignal over the image's StopSignal), sleep lifecycle hooks, gRPC probes against
// a real grpc.health.v1 server, and native sidecars (init containers with restartPolicy
// Always). Outputs go to a hostPath directory, which outlives the pod's own volumes.
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server as NetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConditionStatus, ContainerRestartPolicy, PodPhase, RestartPolicy, StorageMedium } from '@cello/proto/cell';
import { HealthCheckResponse_ServingStatus as Serving, HealthServiceImpl } from '@cello/proto/health';
import { freePort, waitFor } from '@cello/testkit';
import type { AgentOptions } from '../src/agent.js';
import { grpcHealthCheck } from '../src/pod/grpc-probe.js';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

let reg: TestImages;
const agents: TestAgent[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  requireTools();
  reg = await startTestRegistry();
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await reg?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function agent(extra: Partial<AgentOptions> = {}): Promise<TestAgent> {
  const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podIP: '127.0.0.1', ...extra });
  agents.push(a);
  return a;
}

/** A host directory mounted at /out in the units: what they write is read after the pod is gone. */
function outDir(): { dir: string; volume: Record<string, unknown>; mount: { name: string; mountPath: string } } {
  const dir = mkdtempSync(join(tmpdir(), 'cello-semantics-'));
  chmodSync(dir, 0o777);
  dirs.push(dir);
  return { dir, volume: { name: 'out', source: { $case: 'hostPath', value: { path: dir, type: 0 } } }, mount: { name: 'out', mountPath: '/out' } };
}

const sh = (script: string) => ['sh', '-c', script];
const read = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8') : '');

/** Traps each signal, records its name in /out/<file> and exits. */
function trapping(file: string, signals: string[], before = ''): string[] {
  const traps = signals.map((s) => `trap 'echo ${s} >> /out/${file}; exit 0' ${s};`).join(' ');
  return sh(`${traps} ${before} touch /out/${file}.up; while true; do sleep 0.1; done`);
}

function deletePod(a: TestAgent, graceSeconds: number): Promise<void> {
  return new Promise((resolve, reject) => a.client.deletePod({ gracePeriodSeconds: graceSeconds }, (err) => (err ? reject(err) : resolve())));
}

describe.concurrent('stop signals', () => {
  it("sends the image's StopSignal, and the container's lifecycle.stopSignal over it", async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('stop-signals', {
        osName: 'linux',
        volumes: [out.volume],
        containers: [
          { name: 'image-signal', image: reg.busyboxUsr2, command: trapping('image', ['TERM', 'USR1', 'USR2']), volumeMounts: [out.mount] },
          {
            name: 'own-signal',
            image: reg.busyboxUsr2,
            command: trapping('own', ['TERM', 'USR1', 'USR2']),
            volumeMounts: [out.mount],
            lifecycle: { stopSignal: 'SIGUSR1' },
          },
          { name: 'default-signal', image: reg.busybox, command: trapping('default', ['TERM', 'USR1', 'USR2']), volumeMounts: [out.mount] },
        ],
      }),
    });
    await a.watch.until('all running', (w) => ['image-signal', 'own-signal', 'default-signal'].every((n) => w.running(n)), 60_000);
    await waitFor('traps installed', () => ['image', 'own', 'default'].every((f) => existsSync(join(out.dir, `${f}.up`))), { timeoutMs: 10_000 });
    await deletePod(a, 20);
    expect(read(join(out.dir, 'image'))).toBe('USR2\n');
    expect(read(join(out.dir, 'own'))).toBe('USR1\n');
    expect(read(join(out.dir, 'default'))).toBe('TERM\n');
  });
});

describe.concurrent('sleep hooks', () => {
  it('postStart sleep holds the container out of Running for its seconds', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('sleep-poststart', {
        volumes: [out.volume],
        containers: [
          {
            name: 'c',
            image: reg.busybox,
            command: sh('touch /out/started; exec sleep 3600'),
            volumeMounts: [out.mount],
            lifecycle: { postStart: { action: { $case: 'sleep', value: { seconds: 2 } } } },
          },
        ],
      }),
    });
    await a.watch.until('running', (w) => w.running('c'), 60_000);
    const runningAt = Date.now();
    const startedAt = statSync(join(out.dir, 'started')).mtimeMs;
    expect(runningAt - startedAt).toBeGreaterThanOrEqual(1800);
    expect(a.watch.events.some((e) => e.reason === 'FailedPostStartHook')).toBe(false);
  });

  it('preStop sleep delays the stop signal, and is cut short by the grace period', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('sleep-prestop', {
        volumes: [out.volume],
        containers: [
          {
            name: 'short',
            image: reg.busybox,
            command: trapping('short', ['TERM']),
            volumeMounts: [out.mount],
            lifecycle: { preStop: { action: { $case: 'sleep', value: { seconds: 2 } } } },
          },
          {
            name: 'long',
            image: reg.busybox,
            command: trapping('long', ['TERM']),
            volumeMounts: [out.mount],
            lifecycle: { preStop: { action: { $case: 'sleep', value: { seconds: 600 } } } },
          },
        ],
      }),
    });
    await a.watch.until('running', (w) => w.running('short') && w.running('long'), 60_000);
    await waitFor('traps installed', () => existsSync(join(out.dir, 'short.up')) && existsSync(join(out.dir, 'long.up')), { timeoutMs: 10_000 });
    const t0 = Date.now();
    await deletePod(a, 4);
    const took = Date.now() - t0;
    const shortAt = statSync(join(out.dir, 'short')).mtimeMs - t0;
    const longAt = statSync(join(out.dir, 'long')).mtimeMs - t0;
    expect(read(join(out.dir, 'short'))).toBe('TERM\n');
    expect(read(join(out.dir, 'long'))).toBe('TERM\n');
    // TERM after the 2 s sleep, not at once.
    expect(shortAt).toBeGreaterThanOrEqual(1800);
    // The 600 s sleep ends with the 4 s grace period; TERM follows (with the kubelet's 2 s minimum left).
    expect(longAt).toBeGreaterThanOrEqual(3800);
    expect(took).toBeLessThan(15_000);
  });
});

describe('gRPC health check', () => {
  let server: Server;
  let port: number;
  const health = new HealthServiceImpl({ '': Serving.SERVING, up: Serving.SERVING, down: Serving.NOT_SERVING });
  let silent: NetServer;
  let silentPort: number;
  beforeAll(async () => {
    server = new Server();
    server.addService(health.definition, health.implementation);
    port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    // Accepts and never answers: the probe's timeout is what ends it.
    silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    silentPort = (silent.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.tryShutdown(() => r()));
    silent.close();
  });

  it('passes on SERVING, fails on NOT_SERVING, an unknown service, a closed port and a silent one', async () => {
    expect(await grpcHealthCheck('127.0.0.1', port, '', 2000)).toEqual({ ok: true, message: '' });
    expect(await grpcHealthCheck('127.0.0.1', port, 'up', 2000)).toEqual({ ok: true, message: '' });
    expect(await grpcHealthCheck('127.0.0.1', port, 'down', 2000)).toEqual({ ok: false, message: 'service unhealthy (responded with "NOT_SERVING")' });
    const unknown = await grpcHealthCheck('127.0.0.1', port, 'nope', 2000);
    expect(unknown.ok).toBe(false);
    expect(unknown.message).toContain('unknown service');
    const closed = await grpcHealthCheck('127.0.0.1', await freePort(), '', 2000);
    expect(closed.ok).toBe(false);
    expect(closed.message).toMatch(/^timeout: failed to connect service/);
    const t0 = Date.now();
    const hung = await grpcHealthCheck('127.0.0.1', silentPort, '', 1000);
    expect(hung.ok).toBe(false);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it("drives a unit's readiness from the server's status", async () => {
    const svc = new HealthServiceImpl({ app: Serving.SERVING });
    const s = new Server();
    s.addService(svc.definition, svc.implementation);
    const p = await new Promise<number>((resolve, reject) => s.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, n) => (err ? reject(err) : resolve(n))));
    try {
      const a = await agent();
      await apply(a.client, {
        pod: pod('grpc-probe', {
          containers: [
            {
              name: 'app',
              image: reg.busybox,
              command: sh('exec sleep 3600'),
              readinessProbe: { handler: { action: { $case: 'grpc', value: { port: p, service: 'app' } } }, periodSeconds: 1, failureThreshold: 1, timeoutSeconds: 5 },
            },
          ],
        }),
      });
      await a.watch.until('ready', (w) => w.unit('app')?.ready === true, 60_000);
      svc.setStatus('app', Serving.NOT_SERVING);
      await a.watch.until('not ready', (w) => w.unit('app')?.ready === false && w.running('app'), 30_000);
      expect(a.watch.events.some((e) => e.reason === 'Unhealthy' && e.message.includes('NOT_SERVING'))).toBe(true);
      svc.setStatus('app', Serving.SERVING);
      await a.watch.until('ready again', (w) => w.unit('app')?.ready === true, 30_000);
    } finally {
      await new Promise<void>((r) => s.tryShutdown(() => r()));
    }
  });
});

describe('init containers', () => {
  it('report the units behind a running init container waiting PodInitializing, as the kubelet', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('init-waiting', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        terminationGracePeriodSeconds: 1,
        volumes: [out.volume],
        initContainers: [
          { name: 'init1', image: reg.busybox, volumeMounts: [out.mount], command: sh('while [ ! -f /out/go ]; do sleep 0.1; done') },
          { name: 'init2', image: reg.busybox, command: ['true'] },
        ],
        containers: [{ name: 'run1', image: reg.busybox, command: sh('sleep 600') }],
      }),
    });
    await a.watch.until('init1 running', (w) => w.running('init1'), 60_000);
    const reason = (name: string) => {
      const st = a.watch.unit(name)?.state?.state;
      return st?.$case === 'waiting' ? st.value.reason : st?.$case;
    };
    expect(reason('init2')).toBe('PodInitializing');
    expect(reason('run1')).toBe('PodInitializing');
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_PENDING);
    writeFileSync(join(out.dir, 'go'), '');
    await a.watch.until('run1 running', (w) => w.running('run1'), 60_000);
    expect(a.watch.terminated('init2')?.reason).toBe('Completed');
    await deletePod(a, 1);
  });
});

describe.concurrent('native sidecars', () => {
  const always = ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS;

  it('start in init order once started, restart whatever the pod policy, and stop after the main unit of a completed pod, in reverse', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('sidecar-job', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        terminationGracePeriodSeconds: 10,
        volumes: [out.volume],
        initContainers: [
          {
            name: 'side1',
            image: reg.busybox,
            restartPolicy: always,
            volumeMounts: [out.mount],
            // Started only once its startup probe passes, a second after it runs.
            command: sh(
              `trap 'echo side1 >> /out/stopped; exit 0' TERM; echo side1 >> /out/order; sleep 1; touch /tmp/ready; echo side1-ready >> /out/order; ` +
                `while true; do if [ -f /out/crash ]; then rm /out/crash; exit 7; fi; sleep 0.1; done`,
            ),
            startupProbe: { handler: { action: { $case: 'exec', value: { command: ['test', '-f', '/tmp/ready'] } } }, periodSeconds: 1, failureThreshold: 30, timeoutSeconds: 5 },
          },
          { name: 'side2', image: reg.busybox, restartPolicy: always, volumeMounts: [out.mount], command: trapping('stopped', ['TERM'], 'echo side2 >> /out/order;') },
          { name: 'setup', image: reg.busybox, volumeMounts: [out.mount], command: sh('echo setup >> /out/order') },
        ],
        containers: [
          {
            name: 'main',
            image: reg.busybox,
            volumeMounts: [out.mount],
            command: sh('echo main >> /out/order; while [ ! -f /out/done ]; do sleep 0.1; done; echo main-done >> /out/stopped'),
          },
        ],
      }),
    });
    await a.watch.until('main running', (w) => w.running('main'), 60_000);
    // Running is reported once the process is started, maybe before its first line is written.
    const order = () => read(join(out.dir, 'order')).split('\n').filter(Boolean);
    await waitFor('main to write its line', () => order().includes('main'), { timeoutMs: 10_000 });
    expect(order()).toEqual(['side1', 'side1-ready', 'side2', 'setup', 'main']);
    let s = a.watch.last!.status!;
    expect(s.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(s.conditions.find((c) => c.type === 'Initialized')?.status).toBe(1);
    const side1 = s.initContainerStatuses.find((c) => c.name === 'side1')!;
    expect(side1.state?.state?.$case).toBe('running');
    expect(side1.started).toBe(true);
    await a.watch.until('sidecars ready', (w) => w.unit('side1')?.ready === true && w.unit('side2')?.ready === true);
    expect(a.watch.terminated('setup')?.reason).toBe('Completed');

    // A crashing sidecar is restarted though the pod's policy is Never.
    writeFileSync(join(out.dir, 'crash'), '');
    await a.watch.until('side1 restarted', (w) => (w.unit('side1')?.restartCount ?? 0) >= 1 && w.running('side1') && w.unit('side1')?.started === true, 60_000);
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_RUNNING);

    // The main unit completes: the sidecars are stopped, the later one first, and the pod succeeds.
    writeFileSync(join(out.dir, 'done'), '');
    await a.watch.until('pod succeeded', (w) => w.last?.status?.phase === PodPhase.POD_PHASE_SUCCEEDED, 60_000);
    expect(read(join(out.dir, 'stopped')).split('\n').filter(Boolean)).toEqual(['main-done', 'TERM', 'side1']);
    s = a.watch.last!.status!;
    expect(s.initContainerStatuses.every((c) => c.state?.state?.$case === 'terminated')).toBe(true);
  });

  it('on delete, runs preStop hooks at once, stops the main units first, then the sidecars in reverse order; sidecars count towards readiness', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('sidecar-delete', {
        volumes: [out.volume],
        initContainers: [
          {
            name: 'first',
            image: reg.busybox,
            restartPolicy: always,
            volumeMounts: [out.mount],
            command: trapping('first', ['TERM'], "trap 'sleep 1; echo first >> /out/stopped; exit 0' TERM;"),
            // Runs as the pod's termination starts, while the main unit still runs; the signal waits its turn.
            lifecycle: { preStop: { action: { $case: 'exec', value: { command: ['touch', '/out/first-prestop'] } } } },
          },
          {
            name: 'second',
            image: reg.busybox,
            restartPolicy: always,
            volumeMounts: [out.mount],
            command: trapping('second', ['TERM'], "trap 'sleep 1; echo second >> /out/stopped; exit 0' TERM;"),
            readinessProbe: {
              handler: { action: { $case: 'exec', value: { command: ['test', '-f', '/out/second-ready'] } } },
              periodSeconds: 1,
              failureThreshold: 1,
              timeoutSeconds: 5,
            },
          },
        ],
        containers: [
          {
            name: 'app',
            image: reg.busybox,
            volumeMounts: [out.mount],
            command: trapping('app', ['TERM'], "trap 'sleep 1; [ -f /out/first-prestop ] && echo app-saw-prestop >> /out/stopped; echo app >> /out/stopped; exit 0' TERM;"),
          },
        ],
      }),
    });
    await a.watch.until('app running', (w) => w.running('app') && w.unit('app')?.ready === true, 60_000);
    // The sidecar is not ready, so neither is the pod.
    expect(a.watch.last!.status!.conditions.find((c) => c.type === 'Ready')?.status).not.toBe(1);
    writeFileSync(join(out.dir, 'second-ready'), '');
    await a.watch.until('pod ready', (w) => w.last?.status?.conditions.find((c) => c.type === 'Ready')?.status === 1, 30_000);
    await waitFor('traps installed', () => ['first', 'second', 'app'].every((f) => existsSync(join(out.dir, `${f}.up`))), { timeoutMs: 10_000 });
    await deletePod(a, 20);
    expect(read(join(out.dir, 'stopped')).split('\n').filter(Boolean)).toEqual(['app-saw-prestop', 'app', 'second', 'first']);
  });
});

describe.concurrent('shareProcessNamespace', () => {
  const watcher = (out: { mount: { name: string; mountPath: string } }) => ({
    name: 'b',
    image: reg.busybox,
    volumeMounts: [out.mount],
    command: sh('while :; do ps -o pid,args > /out/ps.tmp; mv /out/ps.tmp /out/ps; sleep 0.2; done'),
  });

  it("puts the pod's units in one PID namespace, whose init is not a unit, and ends it with the pod", async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod('shared-pid', { shareProcessNamespace: true, volumes: [out.volume], containers: [{ name: 'a', image: reg.busybox, command: ['sleep', '1234'] }, watcher(out)] }),
    });
    await a.watch.until('running', (w) => w.running('a') && w.running('b'), 60_000);
    const ps = await waitFor('b sees a', () => (read(join(out.dir, 'ps')).includes('sleep 1234') ? read(join(out.dir, 'ps')) : undefined), { timeoutMs: 15_000 });
    // PID 1 is the namespace's init, as pause is in a kubelet pod; the units are not PID 1.
    expect(ps).toMatch(/^\s*1\s+.*cello-pid-namespace/m);
    const initPid = Number(readFileSync(join(a.stateDir, 'pid-namespace'), 'utf8'));
    expect(existsSync(`/proc/${initPid}`)).toBe(true);
    await deletePod(a, 2);
    await waitFor('namespace init gone', () => !existsSync(`/proc/${initPid}/cmdline`) || !readFileSync(`/proc/${initPid}/cmdline`, 'utf8').includes('cello-pid-namespace'), {
      timeoutMs: 5000,
    });
    expect(existsSync(join(a.stateDir, 'pid-namespace'))).toBe(false);
  });

  it('keeps each unit in its own PID namespace without it', async () => {
    const a = await agent();
    const out = outDir();
    await apply(a.client, { pod: pod('own-pid', { volumes: [out.volume], containers: [{ name: 'a', image: reg.busybox, command: ['sleep', '1234'] }, watcher(out)] }) });
    await a.watch.until('running', (w) => w.running('a') && w.running('b'), 60_000);
    const first = await waitFor('ps written', () => read(join(out.dir, 'ps')) || undefined, { timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 1000)); // a has been running a while: b still does not see it
    const ps = read(join(out.dir, 'ps')) || first;
    expect(ps).not.toContain('sleep 1234');
    expect(ps).toMatch(/^\s*1\s+sh -c/m);
  });
});

describe.concurrent('ephemeral containers (kubectl debug)', () => {
  it("run once when added to a running pod, in their target's PID namespace, outside the pod's phase and readiness, never restarted", async () => {
    const a = await agent();
    const out = outDir();
    const p = pod('ephemeral', {
      volumes: [out.volume],
      containers: [
        { name: 'app', image: reg.busybox, command: ['sleep', '1234'], readinessProbe: { handler: { action: { $case: 'exec', value: { command: ['true'] } } }, periodSeconds: 1 } },
      ],
    });
    await apply(a.client, { pod: p });
    await a.watch.until('app ready', (w) => !!w.unit('app')?.ready, 60_000);
    const appId = a.watch.unit('app')!.containerId;
    const debugger_ = { name: 'debugger', image: reg.busybox, targetContainerName: 'app', volumeMounts: [out.mount], command: sh('ps -o pid,args > /out/ps; exit 3') };
    const r = await apply(a.client, { pod: { ...p, spec: { ...p.spec!, ephemeralContainers: [debugger_ as never] } } });
    expect(r.changedUnits).toEqual(['debugger']);
    await a.watch.until('debugger ended', (w) => !!w.terminated('debugger'), 60_000);
    expect(a.watch.terminated('debugger')!.exitCode).toBe(3);
    // It saw the target's processes: it joined app's PID namespace.
    expect(read(join(out.dir, 'ps'))).toContain('sleep 1234');
    // Whatever the pod's restartPolicy (Always), it is not run again; the pod runs on, ready.
    await new Promise((res) => setTimeout(res, 2500));
    const s = a.watch.last!.status!;
    expect(s.ephemeralContainerStatuses.map((c) => [c.name, c.restartCount, c.state?.state?.$case])).toEqual([['debugger', 0, 'terminated']]);
    expect(s.containerStatuses.map((c) => c.name)).toEqual(['app']);
    expect(s.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(s.conditions.find((c) => c.type === 'Ready')?.status).toBe(ConditionStatus.CONDITION_STATUS_TRUE);
    expect(a.watch.unit('app')!.containerId).toBe(appId);
    expect(a.watch.unit('app')!.restartCount).toBe(0);
  });

  it('without a target run in a PID namespace of their own; a target that names no container is refused naming the field', async () => {
    const a = await agent();
    const out = outDir();
    const p = pod('ephemeral-own', { volumes: [out.volume], containers: [{ name: 'app', image: reg.busybox, command: ['sleep', '1234'] }] });
    await apply(a.client, { pod: p });
    await a.watch.until('app running', (w) => w.running('app'), 60_000);
    const eph = (target: string) => ({
      name: 'dbg',
      image: reg.busybox,
      targetContainerName: target,
      volumeMounts: [out.mount],
      command: sh('ps -o pid,args > /out/ps; sleep 3600'),
    });
    await expect(apply(a.client, { pod: { ...p, spec: { ...p.spec!, ephemeralContainers: [eph('nope') as never] } } })).rejects.toThrow(
      /spec\.ephemeralContainers\[0\]\.targetContainerName: "nope" names no container of the pod/,
    );
    await apply(a.client, { pod: { ...p, spec: { ...p.spec!, ephemeralContainers: [eph('') as never] } } });
    await a.watch.until('dbg running', (w) => w.running('dbg'), 60_000);
    const ps = await waitFor('ps written', () => read(join(out.dir, 'ps')) || undefined, { timeoutMs: 15_000 });
    expect(ps).not.toContain('sleep 1234');
    // Deleting the pod stops it with the others.
    await deletePod(a, 1);
    await a.watch.until('pod gone', (w) => !w.last?.status, 30_000);
  });
});

describe.concurrent('supplementalGroupsPolicy', () => {
  // `id -G` in the unit: the process's real groups as runc set them.
  async function groups(name: string, policy: string): Promise<string> {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod(name, {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        securityContext: { supplementalGroups: [7], fsGroup: 9, supplementalGroupsPolicy: policy },
        volumes: [out.volume],
        containers: [{ name: 'c', image: reg.busybox, volumeMounts: [out.mount], command: sh('id -G > /out/groups.tmp && mv /out/groups.tmp /out/groups') }],
      }),
    });
    return waitFor(`${name}: id -G written`, () => read(join(out.dir, 'groups')).trim() || undefined, { timeoutMs: 60_000 });
  }

  // The fixture's /etc/group gives root no group, so both policies give the same groups here;
  // what Strict leaves out (an /etc/group membership) is test/rules.test.ts's resolveUser case.
  it('Strict and Merge: the primary group, supplementalGroups and fsGroup reach the unit', async () => {
    const [strict, merged] = await Promise.all([groups('strict-groups', 'Strict'), groups('merged-groups', 'Merge')]);
    expect(
      strict
        .split(' ')
        .map(Number)
        .sort((x, y) => x - y),
    ).toEqual([0, 7, 9]);
    expect(
      merged
        .split(' ')
        .map(Number)
        .sort((x, y) => x - y),
    ).toEqual([0, 7, 9]);
  });

  it('refuses a policy it does not know, naming the field', async () => {
    const a = await agent();
    const err = (await apply(a.client, {
      pod: pod('bad-policy', { securityContext: { supplementalGroupsPolicy: 'Loose' }, containers: [{ name: 'c', image: reg.busybox, command: ['true'] }] }),
    }).catch((e: unknown) => e)) as { details?: string };
    expect(err.details).toMatch(/spec\.securityContext\.supplementalGroupsPolicy: "Loose": must be Merge or Strict/);
  });
});

describe.concurrent('emptyDir permissions', () => {
  // What a unit running as a non-root user sees, as on a kubelet: emptyDir is 0777 (a memory
  // one 1777) with or without fsGroup; fsGroup adds its group, group rwx and setgid, so files
  // the unit creates there belong to the fsGroup.
  async function modes(name: string, fsGroup: number | undefined): Promise<string> {
    const a = await agent();
    const out = outDir();
    await apply(a.client, {
      pod: pod(name, {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        securityContext: { runAsUser: 1000, runAsGroup: 1000, ...(fsGroup !== undefined ? { fsGroup } : {}) },
        volumes: [
          out.volume,
          { name: 'disk', source: { $case: 'emptyDir', value: {} } },
          { name: 'mem', source: { $case: 'emptyDir', value: { medium: StorageMedium.STORAGE_MEDIUM_MEMORY } } },
        ],
        containers: [
          {
            name: 'c',
            image: reg.busybox,
            volumeMounts: [out.mount, { name: 'disk', mountPath: '/disk' }, { name: 'mem', mountPath: '/mem' }],
            command: sh('touch /disk/f /mem/f && stat -c "%a %g" /disk /mem /disk/f /mem/f | tr "\\n" " " > /out/m.tmp && mv /out/m.tmp /out/modes'),
          },
        ],
      }),
    });
    return waitFor(`${name}: modes written`, () => read(join(out.dir, 'modes')).trim() || undefined, { timeoutMs: 60_000 });
  }

  it('0777 (tmpfs 1777) without fsGroup; fsGroup-owned and setgid with it', async () => {
    const [plain, grouped] = await Promise.all([modes('emptydir-plain', undefined), modes('emptydir-fsgroup', 4321)]);
    expect(plain).toBe('777 0 1777 0 644 1000 644 1000');
    expect(grouped).toBe('2777 4321 3777 4321 644 4321 644 4321');
  });
});

describe.concurrent('emptyDir sizeLimit on disk', () => {
  const limited = { name: 'scratch', source: { $case: 'emptyDir', value: { medium: StorageMedium.STORAGE_MEDIUM_UNSPECIFIED, sizeLimitBytes: 1024 * 1024 } } };
  const writer = (kib: number) => ({
    name: 'w',
    image: reg.busybox,
    volumeMounts: [{ name: 'scratch', mountPath: '/scratch' }],
    command: sh(`dd if=/dev/zero of=/scratch/f bs=1024 count=${kib} && touch /scratch/written && exec sleep 3600`),
  });

  it('evicts the pod whose emptyDir holds more than its limit, as the kubelet', async () => {
    const a = await agent({ emptyDirCheckMs: 200 });
    const over = pod('emptydir-over', { volumes: [limited], containers: [writer(2048)] });
    await apply(a.client, { pod: over });
    await a.watch.until('evicted', (w) => w.last?.status?.phase === PodPhase.POD_PHASE_FAILED, 60_000);
    const s = a.watch.last!.status!;
    expect(s.reason).toBe('Evicted');
    expect(s.message).toBe('Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". ');
    expect(a.watch.events.some((e) => e.reason === 'Evicted')).toBe(true);
    await a.watch.until('unit stopped', (w) => w.terminated('w') !== undefined, 30_000);
    // Applied again (a newer generation of the same pod): it stays evicted, nothing restarts.
    await apply(a.client, { pod: over });
    await new Promise((r) => setTimeout(r, 1000));
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_FAILED);
    expect(a.watch.terminated('w')).toBeDefined();
    expect(a.watch.unit('w')!.restartCount).toBe(0);
  });

  it('leaves a pod within its limit running', async () => {
    const a = await agent({ emptyDirCheckMs: 200 });
    await apply(a.client, { pod: pod('emptydir-under', { volumes: [limited], containers: [writer(512)] }) });
    await a.watch.until('running', (w) => w.running('w'), 60_000);
    await waitFor('written', () => existsSync(join(a.stateDir, 'volumes/scratch/written')), { timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 1500)); // several checks
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(a.watch.events.some((e) => e.reason === 'Evicted')).toBe(false);
  });
});

describe('after an agent restart', () => {
  it('keeps the running sidecar and the shared PID namespace, and starts nothing again', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-semantics-state-'));
    dirs.push(stateDir);
    const first = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podIP: '127.0.0.1', stateDir });
    await apply(first.client, {
      pod: pod('restart-sidecar', {
        shareProcessNamespace: true,
        initContainers: [{ name: 'side', image: reg.busybox, restartPolicy: ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS, command: ['sleep', '3600'] }],
        containers: [{ name: 'app', image: reg.busybox, command: ['sleep', '3600'] }],
      }),
    });
    await first.watch.until('running', (w) => w.running('side') && w.running('app'), 60_000);
    const ids = () => [first.watch.unit('side')!.containerId, first.watch.unit('app')!.containerId];
    const before = ids();
    const initPid = readFileSync(join(stateDir, 'pid-namespace'), 'utf8');
    first.watch.close();
    first.client.close();
    await first.agent.close();

    const second = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podIP: '127.0.0.1', stateDir });
    agents.push(second);
    await second.watch.until('running again', (w) => w.running('side') && w.running('app') && w.last?.status?.phase === PodPhase.POD_PHASE_RUNNING, 60_000);
    expect([second.watch.unit('side')!.containerId, second.watch.unit('app')!.containerId]).toEqual(before);
    expect(second.watch.unit('side')!.restartCount + second.watch.unit('app')!.restartCount).toBe(0);
    expect(second.watch.unit('side')!.started).toBe(true);
    expect(readFileSync(join(stateDir, 'pid-namespace'), 'utf8')).toBe(initPid);
  });
});
