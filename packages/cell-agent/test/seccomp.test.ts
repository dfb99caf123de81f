// RuntimeDefault seccomp with real runc: a static probe (test/fixtures/syscall-probe.c, built
// here with gcc -static) tries the syscalls the profile must refuse from inside a unit, and an
// ordinary workload (busybox sh, httpd, wget) still runs under the same profile.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RestartPolicy, SeccompProfileType } from '@cello/proto/cell';
import { freePort } from '@cello/testkit';
import { runtimeDefaultProfile } from '../src/runtime/seccomp.js';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

let reg: TestImages;
const agents: TestAgent[] = [];
let probeDir: string;

beforeAll(async () => {
  requireTools();
  probeDir = mkdtempSync(join(tmpdir(), 'cello-probe-'));
  try {
    execFileSync('gcc', ['-static', '-O1', '-o', join(probeDir, 'probe'), join(import.meta.dirname, 'fixtures/syscall-probe.c')], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`cannot build the syscall probe (needs gcc and libc6-dev: apt-get install -y gcc libc6-dev): ${(err as Error).message}`);
  }
  reg = await startTestRegistry();
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await reg?.stop();
});

async function agent(): Promise<TestAgent> {
  const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host] });
  agents.push(a);
  return a;
}

function parse(msg: string): Record<string, number> {
  return Object.fromEntries(
    msg
      .trim()
      .split('\n')
      .map((l) => l.split('='))
      .map(([k, v]) => [k!, Number(v)]),
  );
}

const EPERM = 1;
const ENOSYS = 38;

describe.concurrent('RuntimeDefault seccomp', () => {
  it('refuses new namespaces, io_uring and personality flags in a default unit; fork still works', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('seccomp-default', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        volumes: [{ name: 'probe', source: { $case: 'hostPath', value: { path: probeDir, type: 2 } } }],
        containers: [
          {
            name: 'default',
            image: reg.busybox,
            command: ['sh', '-c', '/probe/probe > /dev/termination-log'],
            volumeMounts: [{ name: 'probe', mountPath: '/probe', readOnly: true }],
          },
          // Unconfined keeps today's behaviour: the same probe gets past seccomp.
          {
            name: 'unconfined',
            image: reg.busybox,
            command: ['sh', '-c', '/probe/probe > /dev/termination-log'],
            securityContext: { seccompProfile: { type: SeccompProfileType.SECCOMP_PROFILE_TYPE_UNCONFINED } },
            volumeMounts: [{ name: 'probe', mountPath: '/probe', readOnly: true }],
          },
        ],
      }),
    });
    await a.watch.until('both probes done', (w) => w.terminated('default') !== undefined && w.terminated('unconfined') !== undefined, 30_000);
    const def = parse(a.watch.terminated('default')!.message);
    expect(def).toEqual({
      io_uring_setup: EPERM,
      clone_newuser: EPERM,
      unshare_newuser: EPERM,
      clone3: ENOSYS,
      personality_addr_no_randomize: EPERM,
      personality_query: 0,
      fork: 0,
    });
    const unc = parse(a.watch.terminated('unconfined')!.message);
    expect(unc.io_uring_setup).toBe(0);
    expect(unc.personality_addr_no_randomize).toBe(0);
    expect(unc.clone3).not.toBe(ENOSYS);
  });

  it('runs an ordinary workload (sh, httpd, wget) under the profile', async () => {
    const a = await agent();
    const port = await freePort();
    await apply(a.client, {
      pod: pod('seccomp-web', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          {
            name: 'web',
            image: reg.busybox,
            command: [
              'sh',
              '-c',
              `mkdir -p /www && echo hello > /www/index.html && httpd -p 127.0.0.1:${port} -h /www && for i in $(seq 50); do wget -q -O /dev/termination-log http://127.0.0.1:${port}/index.html && exit 0; sleep 0.1; done; exit 1`,
            ],
          },
        ],
      }),
    });
    await a.watch.until('web done', (w) => w.terminated('web') !== undefined, 30_000);
    expect(a.watch.terminated('web')).toMatchObject({ exitCode: 0, message: 'hello\n' });
  });
});

describe('RuntimeDefault profile', () => {
  it('is an allow-list whose conditional groups follow the capabilities', () => {
    const plain = runtimeDefaultProfile(['CAP_CHOWN'], 'x64');
    expect(plain.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(plain.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    const allowed = (p: typeof plain, n: string) => p.syscalls!.filter((s) => s.action === 'SCMP_ACT_ALLOW' && s.names.includes(n));
    expect(allowed(plain, 'unshare')).toEqual([]);
    expect(allowed(plain, 'clone')[0]!.args).toEqual([{ index: 0, value: 0x7e020000, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
    expect(allowed(plain, 'io_uring_setup')).toEqual([]);
    const admin = runtimeDefaultProfile(['CAP_SYS_ADMIN'], 'x64');
    expect(allowed(admin, 'unshare')).toHaveLength(1);
    expect(allowed(admin, 'clone')[0]!.args).toBeUndefined();
    expect(admin.syscalls!.some((s) => s.names.includes('clone3') && s.action === 'SCMP_ACT_ERRNO')).toBe(false);
    expect(runtimeDefaultProfile([], 'arm64').architectures).toEqual(['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
    expect(() => runtimeDefaultProfile([], 'ppc64')).toThrow(/architecture "ppc64" is not supported/);
  });
});
