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
import { apply, getStatus, pod, StatusWatch } from './helpers/agent.js';
import { makePki, type Pki } from './helpers/certs.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let reg: TestImages;
let pki: Pki;
const procs = new Set<ChildProcess>();

async function startDaemon(stateDir: string, port: number, cgroupParent: string): Promise<ChildProcess> {
  const p = spawn(process.execPath, [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir, '--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.ca, '--insecure-registry', reg.registry.host, '--cgroup-parent', cgroupParent], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CELLO_LOG_LEVEL: 'warn' },
  });
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
});

describe('agent daemon', () => {
  it('requires a client certificate signed by its CA, and survives kill -9 with its units', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-daemon-'));
    const port = await freePort();
    const cg = `/cello-test/daemon-${port}`;
    const first = await startDaemon(stateDir, port, cg);
    const addr = `127.0.0.1:${port}`;
    const good = { cert: pki.clientCert, key: pki.clientKey, ca: pki.ca };

    // mTLS: no client certificate, or one from another CA, is refused.
    for (const tls of [
      { cert: pki.rogueCert, key: pki.rogueKey, ca: pki.ca },
    ]) {
      const c = connectAgent(addr, tls);
      const err = await getStatus(c).then(() => undefined, (e: { code: number }) => e);
      expect(err, 'rogue client certificate must be refused').toBeDefined();
      c.close();
    }
    {
      const { credentials } = await import('@grpc/grpc-js');
      const { readFileSync } = await import('node:fs');
      const { CellAgentClient } = await import('@cello/proto/cell');
      const c = new CellAgentClient(addr, credentials.createSsl(readFileSync(pki.ca)));
      const err = await getStatus(c).then(() => undefined, (e: { code: number }) => e);
      expect(err, 'a client without a certificate must be refused').toBeDefined();
      c.close();
    }

    const client = connectAgent(addr, good);
    let watch = new StatusWatch(client);
    await watch.ready;
    await apply(client, {
      pod: pod('survivor', {
        terminationGracePeriodSeconds: 1,
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
});
