// The agent as the real daemon (dist/cli.js): mTLS refuses clients without a certificate from
// the CA, and a kill -9 of the agent leaves units running for the restarted agent to re-adopt.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, requireCommand } from '@cello/testkit';
import { connectAgent } from '../src/ctl/client.js';
import { defaultRunDir } from '../src/agent.js';
import { apply, getStatus, pod, StatusWatch } from './helpers/agent.js';
import { makePki, type Pki } from './helpers/certs.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let reg: TestImages;
let pki: Pki;
const procs = new Set<ChildProcess>();
const stateDirs: string[] = [];

async function startDaemon(stateDir: string, port: number, cgroupParent: string, extra?: string[]): Promise<ChildProcess> {
  const tls = ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.ca];
  const p = spawn(
    process.execPath,
    [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir, ...(extra ?? tls), '--insecure-registry', reg.registry.host, '--cgroup-parent', cgroupParent],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CELLO_LOG_LEVEL: 'warn' },
    },
  );
  procs.add(p);
  p.on('exit', () => procs.delete(p));
  let err = '';
  p.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`agent did not start within 15 s: ${err}`)), 15_000);
    p.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('listening ')) {
        clearTimeout(t);
        resolve();
      }
    });
    p.on('exit', (code) => reject(new Error(`agent exited with ${code}: ${err}`)));
  });
  return p;
}

beforeAll(async () => {
  requireTools();
  requireCommand('openssl', 'openssl');
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx turbo run build --filter=@cello/cell-agent)`);
  pki = makePki();
  reg = await startTestRegistry();
});

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await reg?.stop();
  const { rmSync } = await import('node:fs');
  for (const d of stateDirs) rmSync(defaultRunDir(d), { recursive: true, force: true });
});

describe('agent daemon', () => {
  it('requires a client certificate signed by its CA, and survives kill -9 with its units', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-daemon-'));
    stateDirs.push(stateDir);
    const port = await freePort();
    const cg = `/cello-test/daemon-${port}`;
    const first = await startDaemon(stateDir, port, cg);
    const addr = `127.0.0.1:${port}`;
    const good = { cert: pki.clientCert, key: pki.clientKey, ca: pki.ca };

    // mTLS: no client certificate, or one from another CA, is refused.
    for (const tls of [{ cert: pki.rogueCert, key: pki.rogueKey, ca: pki.ca }]) {
      const c = connectAgent(addr, tls);
      const err = await getStatus(c).then(
        () => undefined,
        (e: { code: number }) => e,
      );
      expect(err, 'rogue client certificate must be refused').toBeDefined();
      c.close();
    }
    {
      const { credentials } = await import('@grpc/grpc-js');
      const { readFileSync } = await import('node:fs');
      const { CellAgentClient } = await import('@cello/proto/cell');
      const c = new CellAgentClient(addr, credentials.createSsl(readFileSync(pki.ca)));
      const err = await getStatus(c).then(
        () => undefined,
        (e: { code: number }) => e,
      );
      expect(err, 'a client without a certificate must be refused').toBeDefined();
      c.close();
    }

    const client = connectAgent(addr, good);
    let watch = new StatusWatch(client);
    await watch.ready;
    await apply(client, {
      pod: pod('survivor', {
        terminationGracePeriodSeconds: 1,
        volumes: [{ name: 'data', source: { $case: 'emptyDir', value: {} } }],
        initContainers: [{ name: 'setup', image: reg.busybox, command: ['sh', '-c', 'echo x >> /data/runs'], volumeMounts: [{ name: 'data', mountPath: '/data' }] }],
        containers: [{ name: 'ticker', image: reg.busybox, command: ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done'] }],
      }),
    });
    await watch.until('ticker running', (w) => w.running('ticker'));
    const before = watch.unit('ticker')!;
    watch.close();
    client.close();

    // kill -9: the unit keeps running (and keeps writing into its FIFO) while no agent exists.
    first.kill('SIGKILL');
    await once(first, 'exit');
    const { execFileSync } = await import('node:child_process');
    const id = before.containerId.replace('runc://', '');
    const state = () => JSON.parse(execFileSync('runc', ['--root', join(stateDir, 'runc'), 'state', id], { encoding: 'utf8' })) as { status: string; pid: number };
    expect(state().status).toBe('running');
    const pid = state().pid;

    await startDaemon(stateDir, port, cg);
    const client2 = connectAgent(addr, good);
    watch = new StatusWatch(client2);
    await watch.ready;
    await watch.until('ticker re-adopted as running', (w) => w.running('ticker'));
    const after = watch.unit('ticker')!;
    expect(after.containerId).toBe(before.containerId);
    expect(after.restartCount).toBe(0);
    // The completed init unit is not run again by the new agent.
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(join(stateDir, 'volumes/data/runs'), 'utf8')).toBe('x\n');
    const init = watch.last!.status!.initContainerStatuses[0]!;
    expect(init.state?.state?.$case === 'terminated' && init.state.state.value.reason).toBe('Completed');
    expect(state().pid).toBe(pid);
    // The adopted unit is really supervised: when it dies, the new agent restarts it.
    execFileSync('runc', ['--root', join(stateDir, 'runc'), 'kill', id, 'KILL']);
    await watch.until('ticker restarted by the new agent', (w) => w.running('ticker') && (w.unit('ticker')?.restartCount ?? 0) === 1, 20_000);
    const last = watch.unit('ticker')!.lastState?.state;
    expect(last?.$case === 'terminated' && last.value.exitCode).toBe(137);
    await new Promise<void>((r) => client2.deletePod({ gracePeriodSeconds: 1 }, () => r()));
    watch.close();
    client2.close();
  });

  it('ctl applies a Kubernetes manifest, shows status, deletes; /metrics counts pulls and calls', async () => {
    const { execFile } = await import('node:child_process');
    const { writeFileSync } = await import('node:fs');
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-daemon-'));
    stateDirs.push(stateDir);
    const port = await freePort();
    const mport = await freePort();
    await startDaemon(stateDir, port, `/cello-test/ctl-${port}`, ['--insecure-dev', '--metrics-listen', `127.0.0.1:${mport}`]);
    const ctl = (...args: string[]) =>
      new Promise<{ code: number; out: string; err: string }>((resolve) =>
        execFile(process.execPath, [CLI, 'ctl', '--addr', `127.0.0.1:${port}`, '--insecure-dev', ...args], (err, out, e) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: String(out), err: String(e) }),
        ),
      );
    const manifest = join(stateDir, '..', `pod-${port}.yaml`);
    writeFileSync(
      manifest,
      `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ${reg.busybox}
    command: ["sh", "-c", "cat /etc/secret/token > /dev/termination-log; sleep 3600"]
    resources: {limits: {memory: 64Mi, cpu: 250m}}
    volumeMounts: [{name: s, mountPath: /etc/secret}]
  volumes:
  - name: s
    secret: {secretName: tok}
---
apiVersion: v1
kind: Secret
metadata: {name: tok, namespace: demo}
stringData: {token: abc123}
`,
    );
    const applied = await ctl('apply', '-f', manifest);
    expect(applied.err).toBe('');
    expect(applied.out).toMatch(/^pod\/web applied \(generation \d+; changed: main\)/);
    const client = connectAgent(`127.0.0.1:${port}`, undefined);
    const watch = new StatusWatch(client);
    await watch.until('main running', (w) => w.running('main'));
    const st = await ctl('status', '-o', 'json');
    const json = JSON.parse(st.out) as { status: { phase: string; containerStatuses: { name: string; state: { running?: unknown } }[] } };
    expect(json.status.phase).toBe('POD_PHASE_RUNNING');
    expect(json.status.containerStatuses[0]).toMatchObject({ name: 'main', state: { running: {} } });
    const text = await ctl('status');
    expect(text.out).toMatch(/phase: RUNNING/);
    expect(text.out).toMatch(/main: Running since/);
    // The memory limit from the manifest is on the unit's cgroup.
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(`/sys/fs/cgroup/memory/cello-test/ctl-${port}/main/memory.limit_in_bytes`, 'utf8').trim()).toBe(String(64 * 1024 * 1024));
    const metrics = await (await fetch(`http://127.0.0.1:${mport}/metrics`)).text();
    expect(metrics).toMatch(/cello_agent_image_pulls_total\{result="success"\} 1/);
    expect(metrics).toMatch(/cello_agent_grpc_calls_total\{method="ApplyPod",code="OK"\} 1/);
    // A manifest error names the field and changes nothing.
    writeFileSync(manifest, 'apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: x}]}\n');
    const bad = await ctl('apply', '-f', manifest);
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/spec\.containers\[0\]\.image/);
    const del = await ctl('delete', '--grace', '1');
    expect(del.out.trim()).toBe('pod deleted');
    await watch.until('pod gone', (w) => w.last?.status === undefined);
    watch.close();
    client.close();
  });
});
