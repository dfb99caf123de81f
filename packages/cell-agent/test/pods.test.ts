// End to end through the gRPC API with real runc, a real registry (distribution) and real
// processes: init units, shared volumes, restarts and back-off, probes, OOM, graceful stop,
// secret/configMap volumes, user resolution, spec changes and bad input. Each pod runs on its
// own in-process agent (a cell runs one pod), several at once.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PodPhase, RestartPolicy, StorageMedium } from '@cello/proto/cell';
import { freePort, waitFor } from '@cello/testkit';
import { apply, getStatus, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

let reg: TestImages;
let IMG: string;
const agents: TestAgent[] = [];

beforeAll(async () => {
  requireTools();
  reg = await startTestRegistry();
  IMG = reg.busybox;
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

const sh = (script: string) => ['sh', '-c', script];

describe.concurrent('pods', () => {
  it('runs init units in order, then two units sharing an emptyDir', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('init-share', {
        volumes: [{ name: 'shared', source: { $case: 'emptyDir', value: {} } }],
        initContainers: [
          { name: 'first', image: IMG, command: sh('echo one > /data/order'), volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
          { name: 'second', image: IMG, command: sh('echo two >> /data/order'), volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
        ],
        containers: [
          { name: 'writer', image: IMG, command: sh('echo from-writer > /data/msg; sleep 3600'), volumeMounts: [{ name: 'shared', mountPath: '/data' }] },
          {
            name: 'reader',
            image: IMG,
            command: sh('while [ ! -f /data/msg ]; do sleep 0.1; done; cat /data/msg > /data/seen; sleep 3600'),
            volumeMounts: [{ name: 'shared', mountPath: '/data' }],
          },
        ],
      }),
    });
    await a.watch.until(
      'both units running and ready',
      (w) => w.running('writer') && w.running('reader') && w.last?.status?.conditions.find((c) => c.type === 'Ready')?.status === 1,
    );
    const s = a.watch.last!.status!;
    expect(s.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(s.initContainerStatuses.map((c) => c.state?.state?.$case === 'terminated' && c.state.state.value.reason)).toEqual(['Completed', 'Completed']);
    expect(s.conditions.find((c) => c.type === 'Initialized')?.status).toBe(1);
    expect(readFileSync(join(a.stateDir, 'volumes/shared/order'), 'utf8')).toBe('one\ntwo\n');
    expect(a.watch.events.some((e) => e.reason === 'Pulled')).toBe(true);
  });

  it('backs off a crashing unit, counts restarts, keeps the last state', async () => {
    const a = await agent();
    await apply(a.client, { pod: pod('crash', { containers: [{ name: 'crasher', image: IMG, command: sh('echo bye; exit 3') }] }) });
    await a.watch.until('CrashLoopBackOff after restarts', (w) => (w.unit('crasher')?.restartCount ?? 0) >= 2 && w.waiting('crasher')?.reason === 'CrashLoopBackOff');
    const u = a.watch.unit('crasher')!;
    const last = u.lastState?.state?.$case === 'terminated' ? u.lastState.state.value : undefined;
    expect(last?.exitCode).toBe(3);
    expect(last?.reason).toBe('Error');
    expect(a.watch.events.some((e) => e.reason === 'BackOff' && e.container === 'crasher')).toBe(true);
    // Back-off grows: the gap before the third start is longer than before the second.
    const starts = a.watch.history.filter((h) => h.status?.containerStatuses[0]?.state?.state?.$case === 'running').map((h) => h.status!.containerStatuses[0]!.restartCount);
    expect(new Set(starts).size).toBeGreaterThanOrEqual(2);
  });

  it('restarts a unit whose liveness probe fails, and flips readiness', async () => {
    const a = await agent();
    const port = await freePort(); // free now: a random port may be in use, and the unit then crash-loops on EADDRINUSE
    await apply(a.client, {
      pod: pod('probes', {
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'live',
            image: IMG,
            command: sh('touch /tmp/healthy; sleep 3600'),
            livenessProbe: {
              handler: { action: { $case: 'exec', value: { command: ['test', '-f', '/tmp/healthy'] } } },
              periodSeconds: 1,
              failureThreshold: 2,
              timeoutSeconds: 10,
            },
          },
          {
            name: 'web',
            image: IMG,
            ports: [{ name: 'http', containerPort: port }],
            command: sh(`mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 127.0.0.1:${port} -h /www`),
            readinessProbe: {
              handler: {
                action: {
                  $case: 'httpGet',
                  value: { path: '/index.html', port: { value: { $case: 'name', value: 'http' } }, host: '127.0.0.1', httpHeaders: [{ name: 'X-Probe', value: '1' }] },
                },
              },
              periodSeconds: 1,
              failureThreshold: 1,
              timeoutSeconds: 10,
            },
          },
        ],
      }),
    });
    await a.watch.until('web ready, live running', (w) => w.unit('web')?.ready === true && w.running('live'));
    expect(a.watch.unit('live')?.restartCount).toBe(0);
    // Make the liveness probe fail from inside the unit: the agent restarts it.
    const { execFileSync } = await import('node:child_process');
    const live = a.watch.unit('live')!;
    const id = live.containerId.replace('runc://', '');
    execFileSync('runc', ['--root', join(a.stateDir, 'runc'), 'exec', id, 'rm', '/tmp/healthy']);
    await a.watch.until('live restarted', (w) => (w.unit('live')?.restartCount ?? 0) >= 1 && w.running('live'), 20_000);
    expect(a.watch.events.some((e) => e.reason === 'Unhealthy' && e.container === 'live' && e.message.startsWith('Liveness probe failed'))).toBe(true);
    // Readiness: kill httpd's document; the probe fails and the unit becomes unready.
    const web = a.watch.unit('web')!.containerId.replace('runc://', '');
    execFileSync('runc', ['--root', join(a.stateDir, 'runc'), 'exec', web, 'rm', '/www/index.html']);
    await a.watch.until('web unready', (w) => w.unit('web')?.ready === false && w.last?.status?.conditions.find((c) => c.type === 'Ready')?.status === 2);
    execFileSync('runc', ['--root', join(a.stateDir, 'runc'), 'exec', web, 'sh', '-c', 'echo ok > /www/index.html']);
    await a.watch.until('web ready again', (w) => w.unit('web')?.ready === true);
    expect(a.watch.unit('web')?.restartCount).toBe(0);
  });

  it('reports OOMKilled for a unit over its memory limit', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('oom', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [{ name: 'hog', image: IMG, command: sh('head -c 200000000 /dev/zero | tail > /dev/null'), resources: { limits: { memoryBytes: 32 * 1024 * 1024 } } }],
      }),
    });
    await a.watch.until('hog terminated', (w) => w.terminated('hog') !== undefined, 30_000);
    expect(a.watch.terminated('hog')).toMatchObject({ reason: 'OOMKilled', exitCode: 137 });
    expect(a.watch.last?.status?.phase).toBe(PodPhase.POD_PHASE_FAILED);
  });

  it('stops gracefully: SIGTERM to a trapping unit, then SIGKILL after the grace period', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('grace', {
        terminationGracePeriodSeconds: 1,
        volumes: [{ name: 'out', source: { $case: 'emptyDir', value: {} } }],
        containers: [
          {
            name: 'polite',
            image: IMG,
            command: sh("trap 'echo got-term > /out/polite; exit 0' TERM; touch /out/polite-ready; while true; do sleep 0.1; done"),
            volumeMounts: [{ name: 'out', mountPath: '/out' }],
          },
          {
            name: 'stubborn',
            image: IMG,
            command: sh("trap 'echo ignoring > /out/stubborn' TERM; touch /out/stubborn-ready; while true; do sleep 0.1; done"),
            volumeMounts: [{ name: 'out', mountPath: '/out' }],
          },
        ],
      }),
    });
    await a.watch.until('both running', (w) => w.running('polite') && w.running('stubborn'));
    const vol = join(a.stateDir, 'volumes/out');
    // Running is not yet trapping: a SIGTERM before the shell ran `trap` would just kill it.
    await waitFor('both units trapping SIGTERM', () => existsSync(join(vol, 'polite-ready')) && existsSync(join(vol, 'stubborn-ready')), { timeoutMs: 30_000 });
    const t0 = Date.now();
    const seen: Record<string, string> = {};
    // Record the final states as DeletePod drives them.
    const done = a.watch.until('both terminated', (w) => {
      for (const n of ['polite', 'stubborn']) {
        const t = w.terminated(n);
        if (t) seen[n] = `${t.exitCode}`;
      }
      return Object.keys(seen).length === 2;
    });
    const files: Record<string, string> = {};
    const del = new Promise<void>((resolve, reject) => a.client.deletePod({}, (err) => (err ? reject(err) : resolve())));
    await done;
    const took = Date.now() - t0;
    for (const n of ['polite', 'stubborn']) files[n] = readFileSync(join(vol, n), 'utf8').trim();
    await del;
    expect(files).toEqual({ polite: 'got-term', stubborn: 'ignoring' });
    expect(seen).toEqual({ polite: '0', stubborn: '137' });
    expect(took).toBeGreaterThanOrEqual(900);
    // SIGKILL follows the 1 s grace period promptly (loose bound: the test machine is shared).
    expect(took).toBeLessThan(15_000);
  });

  it('mounts secret and configMap volumes with items, modes and subPath; refuses ".." items', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('vols', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        volumes: [
          {
            name: 'sec',
            source: {
              $case: 'secret',
              value: {
                secretName: 'creds',
                defaultMode: 0o400,
                items: [
                  { key: 'user', path: 'nested/username' },
                  { key: 'pass', path: 'password', mode: 0o440 },
                ],
              },
            },
          },
          { name: 'cfg', source: { $case: 'configMap', value: { name: 'settings' } } },
          { name: 'mem', source: { $case: 'emptyDir', value: { medium: StorageMedium.STORAGE_MEDIUM_MEMORY, sizeLimitBytes: 4 * 1024 * 1024 } } },
        ],
        containers: [
          {
            name: 'check',
            image: IMG,
            command: sh(
              'cat /etc/creds/nested/username /etc/creds/password /etc/app.conf; stat -c %a /etc/creds/password /etc/creds/nested/username; ls /etc/cfg-all | sort | tr "\\n" " "; grep -q " /scratch tmpfs" /proc/mounts && echo tmpfs; echo x > /etc/creds/w 2>/dev/null || echo ro > /dev/termination-log; cat /etc/creds/nested/username /etc/creds/password /etc/app.conf >> /dev/termination-log',
            ),
            volumeMounts: [
              { name: 'sec', mountPath: '/etc/creds' },
              { name: 'cfg', mountPath: '/etc/app.conf', subPath: 'app.conf' },
              { name: 'cfg', mountPath: '/etc/cfg-all', readOnly: true },
              { name: 'mem', mountPath: '/scratch' },
            ],
          },
        ],
      }),
      secrets: { creds: { data: { user: Buffer.from('alice\n'), pass: Buffer.from('s3cret\n') } } },
      configMaps: { settings: { data: { 'app.conf': 'mode=fast\n', other: 'x' }, binaryData: {} } },
    });
    await a.watch.until('check finished', (w) => w.terminated('check') !== undefined);
    const t = a.watch.terminated('check')!;
    expect(t.reason).toBe('Completed');
    expect(t.message).toBe('ro\nalice\ns3cret\nmode=fast\n');
    // A second pod whose item path escapes: shown in status with a reason, nothing written.
    const b = await agent();
    await apply(b.client, {
      pod: pod('badvol', {
        volumes: [{ name: 'sec', source: { $case: 'secret', value: { secretName: 'creds', items: [{ key: 'user', path: '../../escape' }] } } }],
        containers: [{ name: 'c', image: IMG, command: sh('sleep 3600'), volumeMounts: [{ name: 'sec', mountPath: '/s' }] }],
      }),
      secrets: { creds: { data: { user: Buffer.from('alice') } } },
    });
    await b.watch.until('config error shown', (w) => w.waiting('c')?.reason === 'CreateContainerConfigError');
    expect(b.watch.waiting('c')!.message).toContain('items[0].path "../../escape" must not contain \'..\'');
  });

  it('a re-apply with changed secret and token data updates mounted volumes in place (..data swap), without restarting the unit; subPath mounts keep their file', async () => {
    const a = await agent();
    const spec = {
      restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
      volumes: [
        {
          name: 'sa',
          source: {
            $case: 'projected',
            value: {
              sources: [
                { source: { $case: 'serviceAccountToken', value: { path: 'token', audience: 'api' } } },
                { source: { $case: 'secret', value: { secretName: 'creds', items: [] } } },
              ],
            },
          },
        },
      ],
      containers: [
        {
          name: 'reader',
          image: IMG,
          // Waits for the refreshed token in the running container, then reports what it sees.
          command: sh(
            'first=$(cat /sa/token); touch /tmp/read-first; while [ "$(cat /sa/token)" = "$first" ]; do sleep 0.1; done; echo "$first $(cat /sa/token) $(cat /sa/user) $(cat /sub-token) $(readlink /sa/token) $(readlink /sa/..data | cut -c1-3)" > /dev/termination-log',
          ),
          volumeMounts: [
            { name: 'sa', mountPath: '/sa' },
            { name: 'sa', mountPath: '/sub-token', subPath: 'token' },
          ],
        },
      ],
    };
    const p = pod('refresh', spec);
    await apply(a.client, {
      pod: p,
      generation: 1,
      secrets: { creds: { data: { user: Buffer.from('alice') } } },
      serviceAccountTokens: [{ volume: 'sa', path: 'token', token: 'token-1', expiresAt: undefined }],
    });
    await a.watch.until('reader running', (w) => w.running('reader'));
    const id = a.watch.unit('reader')!.containerId;
    // Re-apply only once the container has read the first token: a re-apply that lands before
    // would be its "first" token, and it would wait forever for a change.
    const { execFileSync } = await import('node:child_process');
    await waitFor(
      'the reader read the first token',
      () => {
        try {
          execFileSync('runc', ['--root', join(a.stateDir, 'runc'), 'exec', id.replace('runc://', ''), 'test', '-f', '/tmp/read-first'], { stdio: 'ignore' });
          return true;
        } catch {
          return false;
        }
      },
      { timeoutMs: 20_000 },
    );
    const res = await apply(a.client, {
      pod: p,
      generation: 2,
      secrets: { creds: { data: { user: Buffer.from('bob') } } },
      serviceAccountTokens: [{ volume: 'sa', path: 'token', token: 'token-2', expiresAt: undefined }],
    });
    expect(res.changedUnits).toEqual([]);
    await a.watch.until('reader saw the new token', (w) => w.terminated('reader') !== undefined, 20_000);
    const t = a.watch.terminated('reader')!;
    expect(t.reason).toBe('Completed');
    // Old and new token, the secret's new value, the subPath file unchanged (as with the kubelet).
    expect(t.message).toBe('token-1 token-2 bob token-1 ..data/token ..2\n');
    expect(a.watch.unit('reader')!.restartCount).toBe(0);
    expect(a.watch.unit('reader')!.containerId).toBe(id);
  });

  it('resolves the image USER by name, enforces runAsNonRoot', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('users', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          { name: 'named', image: reg.busyboxApp, command: sh('id > /dev/termination-log'), securityContext: { runAsNonRoot: true } },
          { name: 'rooted', image: IMG, command: sh('id'), securityContext: { runAsNonRoot: true } },
          { name: 'numeric', image: IMG, command: sh('id -u > /dev/termination-log'), securityContext: { runAsUser: 4321, runAsGroup: 99 } },
        ],
      }),
    });
    await a.watch.until(
      'named and numeric finished, rooted refused',
      (w) => w.terminated('named') !== undefined && w.terminated('numeric') !== undefined && w.waiting('rooted')?.reason === 'CreateContainerConfigError',
    );
    expect(a.watch.terminated('named')!.message.trim()).toMatch(/^uid=1234\(app\) gid=1234\(appgrp\) groups=.*2000\(extra\)/);
    expect(a.watch.terminated('numeric')!.message.trim()).toBe('4321');
    expect(a.watch.waiting('rooted')!.message).toContain('runAsNonRoot and image will run as root');
  });

  it("applies cello-cri's securityContext.cri: a user by name, the container's groups, its /proc paths; a user the image lacks is refused", async () => {
    const a = await agent();
    const cri = (x: Record<string, unknown>) => ({ securityContext: { cri: { runAsUsername: '', supplementalGroups: [], supplementalGroupsPolicy: '', ...x } } });
    await apply(a.client, {
      pod: pod('cri-fields', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        securityContext: { supplementalGroups: [7], sysctls: [], supplementalGroupsPolicy: '' },
        containers: [
          // app (1234) is in group extra (2000) in the image's /etc/group: Merge adds it.
          { name: 'byname', image: IMG, command: sh('id > /dev/termination-log'), ...cri({ runAsUsername: 'app', supplementalGroups: [5678] }) },
          {
            name: 'strict',
            image: IMG,
            command: sh('id -G > /dev/termination-log'),
            ...cri({ runAsUsername: 'app', supplementalGroups: [5678], supplementalGroupsPolicy: 'Strict' }),
          },
          // runAsUser wins over a name, as containerd.
          {
            name: 'uidwins',
            image: IMG,
            command: sh('id -u > /dev/termination-log'),
            securityContext: { runAsUser: 4321, cri: { runAsUsername: 'app', supplementalGroups: [], supplementalGroupsPolicy: '' } },
          },
          // The lists as given: /etc/hostname masked (reads empty), /tmp read-only, none of the defaults.
          {
            name: 'paths',
            image: IMG,
            command: sh(
              'echo "hostname=[$(cat /etc/hostname)]" > /dev/termination-log; touch /tmp/x 2>/dev/null || echo tmp-ro >> /dev/termination-log; grep -c -e " /proc/keys " -e " /proc/sys " /proc/mounts >> /dev/termination-log',
            ),
            ...cri({ procPaths: { masked: ['/etc/hostname'], readonly: ['/tmp'] } }),
          },
          // Empty lists: nothing masked (a CRI client's explicit choice, e.g. procMount Unmasked).
          {
            name: 'unmasked',
            image: IMG,
            command: sh('grep -c -e " /proc/keys " -e " /proc/sys " /proc/mounts > /dev/termination-log'),
            ...cri({ procPaths: { masked: [], readonly: [] } }),
          },
          // Without the field: the cell's defaults.
          { name: 'defaults', image: IMG, command: sh('grep -c -e " /proc/keys " -e " /proc/sys " /proc/mounts > /dev/termination-log') },
          { name: 'nouser', image: IMG, command: sh('id'), ...cri({ runAsUsername: 'nosuchuser' }) },
          // The hostile image's /etc/passwd leads to the agent machine's, which has daemon: not followed.
          { name: 'hostile', image: reg.busyboxHostile, command: sh('id'), ...cri({ runAsUsername: 'daemon' }) },
        ],
      }),
    });
    const done = ['byname', 'strict', 'uidwins', 'paths', 'unmasked', 'defaults'];
    await a.watch.until(
      'units finished, the unknown users refused',
      (w) =>
        done.every((n) => w.terminated(n) !== undefined) &&
        w.waiting('nouser')?.reason === 'CreateContainerConfigError' &&
        w.waiting('hostile')?.reason === 'CreateContainerConfigError',
      60_000,
    );
    expect(a.watch.terminated('byname')!.message.trim()).toBe('uid=1234(app) gid=1234(appgrp) groups=7,2000(extra),5678');
    expect(
      a.watch
        .terminated('strict')!
        .message.trim()
        .split(' ')
        .map(Number)
        .sort((x, y) => x - y),
    ).toEqual([7, 1234, 5678]);
    expect(a.watch.terminated('uidwins')!.message.trim()).toBe('4321');
    expect(a.watch.terminated('paths')!.message.trim().split('\n')).toEqual(['hostname=[]', 'tmp-ro', '0']);
    expect(a.watch.terminated('unmasked')!.message.trim()).toBe('0');
    expect(a.watch.terminated('defaults')!.message.trim()).toBe('2'); // /proc/keys masked, /proc/sys read-only
    expect(a.watch.waiting('nouser')!.message).toBe(
      "securityContext.cri.runAsUsername (the CRI's run_as_username): unable to find user nosuchuser: no matching entries in the image's /etc/passwd",
    );
    expect(a.watch.waiting('hostile')!.message).toMatch(/^securityContext\.cri\.runAsUsername \(the CRI's run_as_username\): unable to find user daemon/);
  });

  it('restarts only the unit whose spec changed; refuses invalid specs without disturbing the pod', async () => {
    const a = await agent();
    const mk = (msg: string) =>
      pod('change', {
        terminationGracePeriodSeconds: 1,
        containers: [
          { name: 'stable', image: IMG, command: sh('sleep 3600') },
          { name: 'changing', image: IMG, command: sh(`echo ${msg}; sleep 3600`), env: [{ name: 'MSG', value: msg }] },
        ],
      });
    const p1 = mk('one');
    await apply(a.client, { pod: p1, generation: 1 });
    await a.watch.until('both running', (w) => w.running('stable') && w.running('changing'));
    const stableId = a.watch.unit('stable')!.containerId;
    const changingId = a.watch.unit('changing')!.containerId;
    // Same spec again: nothing changes.
    expect((await apply(a.client, { pod: p1, generation: 2 })).changedUnits).toEqual([]);
    const p2 = mk('two');
    p2.metadata = p1.metadata;
    const r = await apply(a.client, { pod: p2, generation: 3 });
    expect(r.changedUnits).toEqual(['changing']);
    await a.watch.until('changing restarted', (w) => w.running('changing') && w.unit('changing')!.containerId !== changingId);
    expect(a.watch.unit('stable')!.containerId).toBe(stableId);
    // Invalid: names the field, leaves the running pod alone.
    const bad = mk('three');
    bad.metadata = p1.metadata;
    bad.spec!.containers[1]!.image = '';
    const err = await apply(a.client, { pod: bad, generation: 4 }).then(
      () => undefined,
      (e: { code: number; details: string }) => e,
    );
    expect(err?.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(err?.details).toBe('spec.containers[1].image: must not be empty');
    const older = await apply(a.client, { pod: p2, generation: 2 }).then(
      () => undefined,
      (e: { code: number }) => e,
    );
    const st = await getStatus(a.client);
    expect({ gen: st.generation, older: older?.code }).toEqual({ gen: 3, older: GrpcStatus.FAILED_PRECONDITION });
    expect(st.status!.containerStatuses.find((c) => c.name === 'stable')!.containerId).toBe(stableId);
  });

  it('applies capabilities, seccomp (RuntimeDefault, Unconfined, Localhost), readOnlyRootFilesystem', async () => {
    const a = await agent();
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(join(a.stateDir, 'seccomp'), { recursive: true });
    // A Localhost profile that denies mkdir(at) only.
    writeFileSync(
      join(a.stateDir, 'seccomp/no-mkdir.json'),
      JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }] }),
    );
    const report = (cmd: string) => sh(`{ ${cmd}; } > /dev/termination-log 2>&1; true`);
    await apply(a.client, {
      pod: pod('security', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          { name: 'caps', image: IMG, command: report('grep CapEff /proc/self/status'), securityContext: { capabilities: { drop: ['ALL'], add: ['NET_ADMIN'] } } },
          { name: 'defcaps', image: IMG, command: report('grep CapEff /proc/self/status') },
          { name: 'privileged', image: IMG, command: report('grep CapEff /proc/self/status'), securityContext: { privileged: true } },
          { name: 'seccomp-default', image: IMG, command: report('unshare -U true && echo allowed || echo denied') },
          { name: 'seccomp-unconfined', image: IMG, command: report('unshare -U true && echo allowed || echo denied'), securityContext: { seccompProfile: { type: 2 } } },
          {
            name: 'seccomp-local',
            image: IMG,
            command: report('mkdir /tmp/d && echo allowed || echo denied'),
            securityContext: { seccompProfile: { type: 3, localhostProfile: 'no-mkdir.json' } },
          },
          { name: 'rootro', image: IMG, command: report('touch /x && echo writable || echo readonly'), securityContext: { readOnlyRootFilesystem: true } },
        ],
      }),
    });
    const names = ['caps', 'defcaps', 'privileged', 'seccomp-default', 'seccomp-unconfined', 'seccomp-local', 'rootro'];
    await a.watch.until('all finished', (w) => names.every((n) => w.terminated(n) !== undefined));
    const msg = (n: string) => a.watch.terminated(n)!.message.trim();
    expect(msg('caps')).toMatch(/CapEff:\s+0000000000001000$/); // CAP_NET_ADMIN only
    expect(msg('defcaps')).toMatch(/CapEff:\s+00000000a80425fb$/); // containerd's default set
    // Privileged: every capability the agent holds (this host's containers may hold fewer than the kernel knows).
    const own = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
    expect(msg('privileged')).toMatch(new RegExp(`CapEff:\\s+${own}$`));
    expect(msg('seccomp-default')).toMatch(/denied$/);
    expect(msg('seccomp-unconfined')).toBe('allowed');
    expect(msg('seccomp-local')).toMatch(/denied$/);
    expect(msg('rootro')).toMatch(/readonly$/);
    expect(a.watch.last?.status?.phase).toBe(PodPhase.POD_PHASE_SUCCEEDED);
  });

  it('expands $(VAR), fills env from fieldRef/secrets/configMaps, writes downwardAPI and hostPath volumes', async () => {
    const a = await agent();
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const host = mkdtempSync(join(tmpdir(), 'cello-hostpath-'));
    writeFileSync(join(host, 'given.txt'), 'from the host\n');
    await apply(a.client, {
      pod: {
        ...pod('env', {
          restartPolicy: RestartPolicy.RESTART_POLICY_ON_FAILURE,
          volumes: [
            {
              name: 'info',
              source: {
                $case: 'downwardApi',
                value: {
                  items: [
                    { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
                    { path: 'name', fieldRef: { fieldPath: 'metadata.name' } },
                  ],
                },
              },
            },
            { name: 'host', source: { $case: 'hostPath', value: { path: host, type: 2 } } },
            { name: 'made', source: { $case: 'hostPath', value: { path: join(host, 'made/here'), type: 1 } } },
          ],
          containers: [
            {
              name: 'env',
              image: IMG,
              command: sh(
                'echo "$(GREETING)" \'$$(GREETING)\' "$POD $IP $PASS $MODE $LIM" > /dev/termination-log; cat /info/name /host/given.txt >> /dev/termination-log; echo made > /made/file',
              ),
              env: [
                { name: 'GREETING', value: 'hi' },
                { name: 'POD', valueFrom: { source: { $case: 'fieldRef', value: { fieldPath: 'metadata.name' } } } },
                { name: 'IP', valueFrom: { source: { $case: 'fieldRef', value: { fieldPath: 'status.podIP' } } } },
                { name: 'PASS', valueFrom: { source: { $case: 'secretKeyRef', value: { name: 's', key: 'pass' } } } },
                { name: 'LIM', valueFrom: { source: { $case: 'resourceFieldRef', value: { resource: 'limits.memory', divisor: 'Mi' } } } },
              ],
              envFrom: [{ prefix: '', source: { $case: 'configMapRef', value: { name: 'cm' } } }],
              resources: { limits: { memoryBytes: 64 * 1024 * 1024 } },
              volumeMounts: [
                { name: 'info', mountPath: '/info' },
                { name: 'host', mountPath: '/host', readOnly: true },
                { name: 'made', mountPath: '/made' },
              ],
            },
          ],
        }),
      },
      secrets: { s: { data: { pass: Buffer.from('pw') } } },
      configMaps: { cm: { data: { MODE: 'fast' }, binaryData: {} } },
    });
    await a.watch.until('env finished', (w) => w.terminated('env') !== undefined);
    const st = await getStatus(a.client);
    const ip = st.status!.podIp;
    expect(a.watch.terminated('env')!.message).toBe(`hi $(GREETING) env ${ip} pw fast 64\nenvfrom the host\n`);
    expect(readFileSync(join(host, 'made/here/file'), 'utf8')).toBe('made\n');
    expect(st.status!.phase).toBe(PodPhase.POD_PHASE_SUCCEEDED);
    // A hostPath of the wrong type is a clear error in status.
    const b = await agent();
    await apply(b.client, {
      pod: pod('badhost', {
        volumes: [{ name: 'h', source: { $case: 'hostPath', value: { path: join(host, 'given.txt'), type: 2 } } }],
        containers: [{ name: 'c', image: IMG, command: sh('true'), volumeMounts: [{ name: 'h', mountPath: '/h' }] }],
      }),
    });
    await b.watch.until('hostPath error shown', (w) => w.waiting('c')?.reason === 'CreateContainerConfigError');
    expect(b.watch.waiting('c')!.message).toContain(`hostPath ${join(host, 'given.txt')} is not an existing directory`);
  });

  it('gates on a startup probe, probes TCP, and falls back to logs for the termination message', async () => {
    const a = await agent();
    const port = await freePort(); // free now: a random port may be in use, and the unit then crash-loops on EADDRINUSE
    await apply(a.client, {
      pod: pod('startup', {
        terminationGracePeriodSeconds: 1,
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          {
            name: 'slow',
            image: IMG,
            ports: [{ containerPort: port }],
            command: sh(`sleep 1; exec httpd -f -p 127.0.0.1:${port} -h /tmp`),
            startupProbe: {
              handler: { action: { $case: 'tcpSocket', value: { port: { value: { $case: 'number', value: port } }, host: '127.0.0.1' } } },
              periodSeconds: 1,
              failureThreshold: 30,
              timeoutSeconds: 10,
            },
            readinessProbe: {
              handler: { action: { $case: 'tcpSocket', value: { port: { value: { $case: 'number', value: port } }, host: '127.0.0.1' } } },
              periodSeconds: 1,
              timeoutSeconds: 10,
            },
          },
          { name: 'sayer', image: IMG, command: sh('echo first; echo last words; exit 2'), terminationMessagePolicy: 2 },
        ],
      }),
    });
    await a.watch.until('slow running but not started', (w) => w.running('slow'));
    expect(a.watch.unit('slow')!.started).toBe(false);
    expect(a.watch.unit('slow')!.ready).toBe(false);
    await a.watch.until('slow started and ready', (w) => w.unit('slow')?.started === true && w.unit('slow')?.ready === true, 20_000);
    await a.watch.until('sayer finished', (w) => w.terminated('sayer') !== undefined);
    expect(a.watch.terminated('sayer')).toMatchObject({ exitCode: 2, reason: 'Error', message: 'first\nlast words' });
  });

  it('runs a tty unit on a pseudo-terminal', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('tty', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [{ name: 'term', image: IMG, tty: true, command: sh('{ tty; test -t 0 && echo stdin-is-tty; } > /dev/termination-log') }],
      }),
    });
    await a.watch.until('term finished', (w) => w.terminated('term') !== undefined);
    expect(a.watch.terminated('term')).toMatchObject({ reason: 'Completed', message: '/dev/pts/0\nstdin-is-tty\n' });
  });

  it('puts the units in --pod-netns when given, and reports its address as the pod IP', async () => {
    const { execFileSync } = await import('node:child_process');
    const ns = `cello-test-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      execFileSync('ip', ['-n', ns, 'addr', 'add', '10.231.7.9/32', 'dev', 'lo']);
      const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podNetns: `/run/netns/${ns}` });
      agents.push(a);
      await apply(a.client, {
        pod: pod('netns', {
          restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
          containers: [
            {
              name: 'n',
              image: IMG,
              command: sh(
                '{ ip -o -4 addr show | grep -o "inet [0-9.]*" | tr "\\n" " "; grep -c . /etc/hosts >/dev/null; grep 10.231.7.9 /etc/hosts | cut -f2; } > /dev/termination-log',
              ),
            },
          ],
        }),
      });
      await a.watch.until('n finished', (w) => w.terminated('n') !== undefined);
      expect(a.watch.terminated('n')!.message).toBe('inet 127.0.0.1 inet 10.231.7.9 netns\n');
      expect(a.watch.last?.status?.podIp).toBe('10.231.7.9');
      await a.stop();
      agents.splice(agents.indexOf(a), 1);
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  });

  it('pulls with the registry credentials from the request; shows auth and unreachable-registry failures', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { startRegistry, buildFixtures, pushLayoutTag } = await import('@cello/testkit');
    const dir = mkdtempSync(join(tmpdir(), 'cello-htpasswd-'));
    const hash = execFileSync('python3', ['-c', "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))"], { encoding: 'utf8' }).trim();
    writeFileSync(join(dir, 'htpasswd'), `puller:${hash}\n`);
    const priv = await startRegistry({ htpasswd: join(dir, 'htpasswd') });
    try {
      const f = await buildFixtures('busybox');
      const ref = await pushLayoutTag(priv, f.layout, 'busybox', 'private/busybox:1', { creds: 'puller:s3cret' });
      const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host, priv.host] });
      agents.push(a);
      const p = pod('private', {
        containers: [
          { name: 'private', image: ref, command: sh('sleep 3600') },
          { name: 'unreachable', image: '127.0.0.1:1/nothing/here:1', command: sh('sleep 3600') },
        ],
      });
      await apply(a.client, { pod: p, generation: 1 });
      await a.watch.until(
        'auth failure shown',
        (w) =>
          ['ErrImagePull', 'ImagePullBackOff'].includes(w.waiting('private')?.reason ?? '') &&
          ['ErrImagePull', 'ImagePullBackOff'].includes(w.waiting('unreachable')?.reason ?? ''),
      );
      expect(a.watch.waiting('private')!.message).toMatch(/credentials required/);
      expect(a.watch.waiting('unreachable')!.message).toMatch(/127\.0\.0\.1:1/);
      // The same pod with credentials: the retried pull succeeds, nothing else changes.
      const r = await apply(a.client, { pod: p, generation: 2, registryCredentials: [{ registry: priv.host, username: 'puller', password: 's3cret', identityToken: '' }] });
      expect(r.changedUnits).toEqual([]);
      await a.watch.until('private running', (w) => w.running('private'), 20_000);
    } finally {
      await priv.stop();
    }
  });

  it('runs postStart before Running and preStop before the stop signal; mounts projected volumes', async () => {
    const a = await agent();
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const outDir = mkdtempSync(join(tmpdir(), 'cello-hooks-'));
    await apply(a.client, {
      pod: pod('hooks', {
        terminationGracePeriodSeconds: 5,
        volumes: [
          { name: 'out', source: { $case: 'hostPath', value: { path: outDir, type: 2 } } },
          {
            name: 'all',
            source: {
              $case: 'projected',
              value: {
                defaultMode: 0o440,
                sources: [
                  { source: { $case: 'secret', value: { secretName: 's', items: [{ key: 'k', path: 'secret/k' }] } } },
                  { source: { $case: 'configMap', value: { name: 'c', items: [] } } },
                  { source: { $case: 'downwardApi', value: { items: [{ path: 'ns', fieldRef: { fieldPath: 'metadata.namespace' } }] } } },
                ],
              },
            },
          },
        ],
        containers: [
          {
            name: 'hooked',
            image: IMG,
            command: sh("trap 'echo term >> /out/log; exit 0' TERM; touch /out/trapping; while true; do sleep 0.1; done"),
            lifecycle: {
              postStart: {
                action: {
                  $case: 'exec',
                  value: { command: ['sh', '-c', 'echo poststart >> /out/log; cat /all/secret/k /all/c1 /all/ns >> /out/log; stat -L -c %a /all/c1 >> /out/log'] },
                },
              },
              preStop: { action: { $case: 'exec', value: { command: ['sh', '-c', 'echo prestop >> /out/log'] } } },
            },
            volumeMounts: [
              { name: 'out', mountPath: '/out' },
              { name: 'all', mountPath: '/all' },
            ],
          },
        ],
      }),
      secrets: { s: { data: { k: Buffer.from('sec\n') } } },
      configMaps: { c: { data: { c1: 'conf\n' }, binaryData: {} } },
    });
    await a.watch.until('hooked running', (w) => w.running('hooked'));
    const log = () => readFileSync(join(outDir, 'log'), 'utf8');
    // Running is reported only once postStart has finished.
    expect(log()).toBe('poststart\nsec\nconf\ndefault440\n');
    await waitFor('the unit trapping SIGTERM', () => existsSync(join(outDir, 'trapping')), { timeoutMs: 30_000 });
    await new Promise<void>((resolve, reject) => a.client.deletePod({}, (err) => (err ? reject(err) : resolve())));
    expect(log()).toBe('poststart\nsec\nconf\ndefault440\nprestop\nterm\n');
  });

  it('fails the pod with DeadlineExceeded after activeDeadlineSeconds', async () => {
    const a = await agent();
    const t0 = Date.now();
    await apply(a.client, {
      pod: pod('deadline', { activeDeadlineSeconds: 2, terminationGracePeriodSeconds: 1, containers: [{ name: 'forever', image: IMG, command: sh('sleep 3600') }] }),
    });
    await a.watch.until('deadline exceeded', (w) => w.last?.status?.reason === 'DeadlineExceeded' && w.terminated('forever') !== undefined, 20_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);
    expect(a.watch.last!.status!.phase).toBe(PodPhase.POD_PHASE_FAILED);
    expect(a.watch.events.some((e) => e.reason === 'DeadlineExceeded')).toBe(true);
  });

  it('connects Attach to a stdin unit; stdinOnce ends its stdin when the session does', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('stdin', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          { name: 'reader', image: IMG, stdin: true, command: sh('read a; read b; printf "%s\\n%s\\n" "$a" "$b" | sort | tr "\\n" " " > /dev/termination-log') },
          { name: 'once', image: IMG, stdin: true, stdinOnce: true, command: sh('wc -c > /dev/termination-log; exit 3') },
        ],
      }),
    });
    await a.watch.until('both running', (w) => w.running('reader') && w.running('once'));
    const { ExecInput } = await import('@cello/proto/cell');
    const attach = (unit: string, data: string[], eof: boolean) => {
      const call = a.client.attach();
      call.on('data', () => {});
      call.on('error', () => {});
      call.write(ExecInput.fromPartial({ frame: { $case: 'start', value: { container: unit, stdin: true, tty: false, command: [] } } }));
      for (const d of data) call.write(ExecInput.fromPartial({ frame: { $case: 'stdin', value: Buffer.from(d) } }));
      if (eof) call.write(ExecInput.fromPartial({ frame: { $case: 'stdinEof', value: true } }));
      return call;
    };
    // Two sessions write to the same stdin; one's EOF does not close it for the other.
    const s1 = attach('reader', ['one\n'], true);
    const s2 = attach('reader', ['two\n'], true);
    await a.watch.until('reader finished', (w) => w.terminated('reader') !== undefined);
    s1.end();
    s2.end();
    expect(a.watch.terminated('reader')!.message).toBe('one two ');
    const s3 = attach('once', ['12345'], true);
    // The session's exit frame carries the unit's own exit code.
    const exit = new Promise<number | undefined>((resolve) => {
      s3.on('data', (m: { frame?: { $case: string; value: { exitCode: number } } }) => {
        if (m.frame?.$case === 'exit') resolve(m.frame.value.exitCode);
      });
      s3.on('end', () => resolve(undefined));
    });
    await a.watch.until('once finished', (w) => w.terminated('once') !== undefined);
    expect(await exit).toBe(3);
    s3.end();
    expect(a.watch.terminated('once')!.message.trim()).toBe('5');
    expect(a.watch.terminated('once')!.exitCode).toBe(3);
  });

  it('shows a missing image and a missing command in status', async () => {
    const a = await agent();
    await apply(a.client, {
      pod: pod('missing', {
        containers: [
          { name: 'noimage', image: `${reg.registry.host}/nope:1` },
          { name: 'nocmd', image: IMG, command: ['/bin/does-not-exist'] },
        ],
      }),
    });
    await a.watch.until(
      'pull failure and start failure',
      (w) =>
        ['ErrImagePull', 'ImagePullBackOff'].includes(w.waiting('noimage')?.reason ?? '') &&
        (w.unit('nocmd')?.lastState?.state?.$case === 'terminated' || w.terminated('nocmd') !== undefined),
    );
    expect(a.watch.waiting('noimage')!.message).toMatch(/nope/);
    const nc = a.watch.unit('nocmd')!;
    const t = nc.lastState?.state?.$case === 'terminated' ? nc.lastState.state.value : a.watch.terminated('nocmd')!;
    expect(t.reason).toBe('StartError');
    expect(t.message).toContain('does-not-exist');
  });
});
