// The Kubernetes rules the agent reimplements, checked directly: $(VAR) expansion and
// command/args against entrypoint/cmd, user resolution from an image's passwd/group, paths
// resolved inside a root, capability sets, back-off, pod phase.
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContainerRestartPolicy, ContainerStatus, PodSpec, PodPhase, RestartPolicy, ApplyPodRequest, Pod } from '@cello/proto/cell';
import { expand, resolveArgv } from '../src/runtime/expand.js';
import { resolveUser } from '../src/runtime/user.js';
import { checkItemPath, resolveInRoot } from '../src/runtime/safe-path.js';
import { ALL_CAPABILITIES, DEFAULT_CAPABILITIES, agentBoundingSet, capabilitiesOfMask, resolveCapabilities } from '../src/runtime/capabilities.js';
import { Backoff, KUBERNETES_BACKOFF } from '../src/pod/backoff.js';
import { podPhase, qosClass, withDefaultWaitingReason } from '../src/pod/pod-status.js';
import { validateApply, InvalidPodError } from '../src/pod/validate.js';
import { resolveSubPath } from '../src/pod/volumes.js';

describe('$(VAR) expansion and argv', () => {
  const env = new Map([
    ['A', 'x'],
    ['B', 'y z'],
  ]);
  const look = (n: string) => env.get(n);
  it('expands defined variables, keeps undefined ones, unescapes $$', () => {
    expect(expand('$(A)-$(B)', look)).toBe('x-y z');
    expect(expand('$(NOPE)', look)).toBe('$(NOPE)');
    expect(expand('$$(A) $$ $', look)).toBe('$(A) $ $');
    expect(expand('$(A', look)).toBe('$(A');
  });
  it('follows command/args vs entrypoint/cmd', () => {
    const base = { entrypoint: ['/ep'], cmd: ['c1'], env };
    expect(resolveArgv({ ...base, command: [], args: [] })).toEqual(['/ep', 'c1']);
    expect(resolveArgv({ ...base, command: ['run', '$(A)'], args: [] })).toEqual(['run', 'x']);
    expect(resolveArgv({ ...base, command: [], args: ['$(B)'] })).toEqual(['/ep', 'y z']);
    expect(resolveArgv({ ...base, command: ['run'], args: ['a'] })).toEqual(['run', 'a']);
  });
});

describe('user resolution from the image', () => {
  const root = mkdtempSync(join(tmpdir(), 'cello-users-'));
  mkdirSync(join(root, 'etc'));
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n');
  writeFileSync(join(root, 'etc/group'), 'root:x:0:\nwww:x:33:\nlogs:x:4:web,other\n');
  it('resolves names, numbers, groups and supplementary groups', () => {
    expect(resolveUser({ layers: [root], imageUser: 'web' })).toMatchObject({ uid: 33, gid: 33, additionalGids: [4], home: '/var/www' });
    expect(resolveUser({ layers: [root], imageUser: 'web:logs' })).toMatchObject({ uid: 33, gid: 4, additionalGids: [] });
    expect(resolveUser({ layers: [root], imageUser: '1000:1000' })).toMatchObject({ uid: 1000, gid: 1000 });
    expect(resolveUser({ layers: [root], imageUser: 'web', runAsUser: 0, supplementalGroups: [7], fsGroup: 9 })).toMatchObject({ uid: 0, gid: 0, additionalGids: [7, 9] });
    // supplementalGroupsPolicy Strict: the pod's groups only, not /etc/group's (web is in group 4).
    expect(resolveUser({ layers: [root], imageUser: 'web', supplementalGroups: [7], fsGroup: 9, strictGroups: true })).toMatchObject({ uid: 33, gid: 33, additionalGids: [7, 9] });
    expect(resolveUser({ layers: [root], imageUser: 'web', supplementalGroups: [7], fsGroup: 9 })).toMatchObject({ uid: 33, gid: 33, additionalGids: [4, 7, 9] });
    expect(() => resolveUser({ layers: [root], imageUser: 'ghost' })).toThrow(/unable to find user ghost/);
  });
  it("resolves cello-cri's run_as_username: its uid and gid (runAsGroup over it, runAsUser wins), never the image USER's group", () => {
    expect(resolveUser({ layers: [root], imageUser: 'root:logs', runAsUsername: 'web' })).toMatchObject({ uid: 33, gid: 33, additionalGids: [4], name: 'web' });
    expect(resolveUser({ layers: [root], imageUser: '', runAsUsername: 'web', runAsGroup: 5, strictGroups: true })).toMatchObject({ uid: 33, gid: 5, additionalGids: [] });
    expect(resolveUser({ layers: [root], imageUser: '', runAsUsername: 'web', runAsUser: 1000 })).toMatchObject({ uid: 1000, gid: 0 });
    expect(() => resolveUser({ layers: [root], imageUser: 'web', runAsUsername: 'ghost' })).toThrow(
      /^securityContext\.cri\.runAsUsername \(the CRI's run_as_username\): unable to find user ghost/,
    );
  });
  it('reads the topmost layer that has the file, and honours whiteouts', () => {
    const upper = mkdtempSync(join(tmpdir(), 'cello-upper-'));
    mkdirSync(join(upper, 'etc'));
    writeFileSync(join(upper, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\nweb:x:77:77::/srv:/bin/sh\n');
    expect(resolveUser({ layers: [root, upper], imageUser: 'web' })).toMatchObject({ uid: 77, home: '/srv' });
    const wh = mkdtempSync(join(tmpdir(), 'cello-wh-'));
    mkdirSync(join(wh, 'etc'));
    writeFileSync(join(wh, 'etc/.wh.passwd'), '');
    expect(() => resolveUser({ layers: [root, wh], imageUser: 'web' })).toThrow(/unable to find user web/);
  });
  it('does not follow an /etc/passwd symlink out of the image', () => {
    const evil = mkdtempSync(join(tmpdir(), 'cello-evil-'));
    mkdirSync(join(evil, 'etc'));
    symlinkSync('/etc/passwd', join(evil, 'etc/passwd')); // the host's
    expect(() => resolveUser({ layers: [evil], imageUser: 'root' })).toThrow(/unable to find user root/);
  });
});

describe('paths inside a root', () => {
  const root = mkdtempSync(join(tmpdir(), 'cello-root-'));
  mkdirSync(join(root, 'a/b'), { recursive: true });
  symlinkSync('/etc', join(root, 'abs'));
  symlinkSync('../../..', join(root, 'a/b/up'));
  it('resolves .. and symlinks as if root were /', () => {
    expect(resolveInRoot(root, '../../etc/passwd')).toBe(join(root, 'etc/passwd'));
    expect(resolveInRoot(root, 'abs/passwd')).toBe(join(root, 'etc/passwd'));
    expect(resolveInRoot(root, 'a/b/up/x')).toBe(join(root, 'x'));
    expect(resolveInRoot(root, 'a/b/new/file')).toBe(join(root, 'a/b/new/file'));
  });
  it('keeps a subPath inside its volume whatever symlinks the unit left there', () => {
    const vol = mkdtempSync(join(tmpdir(), 'cello-vol-'));
    symlinkSync('/etc', join(vol, 'evil'));
    symlinkSync('../../../../..', join(vol, 'up'));
    expect(resolveSubPath(vol, 'evil')).toBe('etc');
    expect(resolveSubPath(vol, 'up/var')).toBe('var');
    expect(() => resolveSubPath(vol, '../x')).toThrow(/must not contain/);
    expect(() => resolveSubPath(vol, '/abs')).toThrow(/must be relative/);
  });
  it('checks volume item paths', () => {
    expect(checkItemPath('ok/file')).toBeUndefined();
    expect(checkItemPath('/abs')).toMatch(/relative/);
    expect(checkItemPath('a/../b')).toMatch(/'\.\.'/);
  });
});

describe('capabilities', () => {
  it('adds and drops from the default set; privileged gets all', () => {
    const caps = resolveCapabilities({ add: ['NET_ADMIN'], drop: ['KILL', 'cap_chown'], privileged: false });
    expect(caps).toContain('CAP_NET_ADMIN');
    expect(caps).not.toContain('CAP_KILL');
    expect(caps).not.toContain('CAP_CHOWN');
    expect(caps.length).toBe(DEFAULT_CAPABILITIES.length - 1);
    expect(resolveCapabilities({ add: [], drop: ['ALL'], privileged: false })).toEqual([]);
    expect(resolveCapabilities({ add: [], drop: ['ALL'], privileged: true })).toContain('CAP_SYS_ADMIN');
  });

  it('privileged and add ALL mean what the agent holds: its bounding set, not every capability the kernel knows', () => {
    // A host whose containers lack CAP_SYS_RESOURCE (bit 24), as this project's CI machines.
    const held = capabilitiesOfMask('000001fffeffffff');
    expect(held).toHaveLength(ALL_CAPABILITIES.length - 1);
    expect(held).not.toContain('CAP_SYS_RESOURCE');
    expect(held).toContain('CAP_CHECKPOINT_RESTORE');
    expect(capabilitiesOfMask('0')).toEqual([]);
    expect(resolveCapabilities({ add: [], drop: [], privileged: true }, held)).toEqual(held);
    expect(resolveCapabilities({ add: ['ALL'], drop: [], privileged: false }, held)).not.toContain('CAP_SYS_RESOURCE');
    // Naming a capability the agent lacks is the pod's choice: asked for, and runc says no.
    expect(resolveCapabilities({ add: ['SYS_RESOURCE'], drop: [], privileged: false }, held)).toContain('CAP_SYS_RESOURCE');
    // This process's own set is read from /proc/self/status.
    const own = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
    expect(agentBoundingSet()).toEqual(capabilitiesOfMask(own));
  });
});

describe('back-off', () => {
  it('restarts at once, then 10 s doubling to 5 min, and resets after 10 min of running', () => {
    const b = new Backoff(KUBERNETES_BACKOFF);
    const seq = Array.from({ length: 8 }, () => b.next(1000));
    expect(seq).toEqual([0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
    expect(b.next(600_000)).toBe(0);
    expect(b.next(1000)).toBe(10_000);
  });
});

describe('pod phase and QoS', () => {
  const running = ContainerStatus.fromPartial({ name: 'a', state: { state: { $case: 'running', value: {} } } });
  const done = (code: number) => ContainerStatus.fromPartial({ name: 'a', state: { state: { $case: 'terminated', value: { exitCode: code } } } });
  const waiting = ContainerStatus.fromPartial({ name: 'a', state: { state: { $case: 'waiting', value: { reason: 'ContainerCreating' } } } });
  const spec = (p: RestartPolicy) => PodSpec.fromPartial({ restartPolicy: p });
  it('computes the phase as the kubelet does', () => {
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_ALWAYS), [], [running])).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_ALWAYS), [], [waiting])).toBe(PodPhase.POD_PHASE_PENDING);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_NEVER), [], [done(0)])).toBe(PodPhase.POD_PHASE_SUCCEEDED);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_NEVER), [], [done(1)])).toBe(PodPhase.POD_PHASE_FAILED);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_ON_FAILURE), [], [done(0)])).toBe(PodPhase.POD_PHASE_SUCCEEDED);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_ALWAYS), [], [done(0)])).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_NEVER), [done(1)], [waiting])).toBe(PodPhase.POD_PHASE_FAILED);
    expect(podPhase(spec(RestartPolicy.RESTART_POLICY_ALWAYS), [running], [waiting])).toBe(PodPhase.POD_PHASE_PENDING);
  });
  it('computes the phase of a pod with a sidecar as the kubelet does', () => {
    const sc = (p: RestartPolicy) =>
      PodSpec.fromPartial({
        restartPolicy: p,
        initContainers: [{ name: 's', restartPolicy: ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS }],
        containers: [{ name: 'a' }],
      });
    const side = (st: object, extra: object = {}) => ContainerStatus.fromPartial({ name: 's', state: { state: st as never }, ...extra });
    const up = side({ $case: 'running', value: {} }, { started: true });
    const starting = side({ $case: 'running', value: {} }, { started: false });
    const crashLooping = side({ $case: 'waiting', value: { reason: 'CrashLoopBackOff' } }, { lastState: { state: { $case: 'terminated', value: { exitCode: 1 } } } });
    const stopped = side({ $case: 'terminated', value: { exitCode: 143 } });
    const never = sc(RestartPolicy.RESTART_POLICY_NEVER);
    expect(podPhase(never, [starting], [waiting], false)).toBe(PodPhase.POD_PHASE_PENDING);
    expect(podPhase(never, [up], [running], true)).toBe(PodPhase.POD_PHASE_RUNNING);
    // A crash-looping sidecar after initialization does not make the pod Pending.
    expect(podPhase(never, [crashLooping], [running], true)).toBe(PodPhase.POD_PHASE_RUNNING);
    // Main done, sidecar still running: Running until the sidecar is stopped; then it is ignored.
    expect(podPhase(never, [up], [done(0)], true)).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(podPhase(never, [stopped], [done(0)], true)).toBe(PodPhase.POD_PHASE_SUCCEEDED);
    expect(podPhase(never, [stopped], [done(2)], true)).toBe(PodPhase.POD_PHASE_FAILED);
  });
  it('reports a unit not yet run waiting PodInitializing in a pod with init containers, as the kubelet', () => {
    const w = (reason: string, extra: object = {}) => ContainerStatus.fromPartial({ name: 'a', state: { state: { $case: 'waiting', value: { reason } } }, ...extra });
    const reasonOf = (s: ContainerStatus) => (s.state?.state?.$case === 'waiting' ? s.state.state.value.reason : s.state?.state?.$case);
    expect(withDefaultWaitingReason([w('ContainerCreating')], false).map(reasonOf)).toEqual(['ContainerCreating']);
    expect(withDefaultWaitingReason([w('ContainerCreating'), running, w('ErrImagePull')], true).map(reasonOf)).toEqual(['PodInitializing', 'running', 'ErrImagePull']);
    // A unit that ran before keeps its own state (the kubelet reports its last container).
    const again = w('ContainerCreating', { restartCount: 1, lastState: { state: { $case: 'terminated', value: { exitCode: 1 } } } });
    expect(withDefaultWaitingReason([again], true).map(reasonOf)).toEqual(['ContainerCreating']);
  });
  it('classifies QoS', () => {
    const c = (limits: object, requests: object) => PodSpec.fromPartial({ containers: [{ name: 'a', resources: { limits, requests } }] });
    expect(qosClass(c({}, {}))).toBe('BestEffort');
    expect(qosClass(c({ cpuMillis: 100, memoryBytes: 1 }, {}))).toBe('Guaranteed');
    expect(qosClass(c({ cpuMillis: 100 }, { cpuMillis: 50 }))).toBe('Burstable');
  });
});

describe('validation names the field', () => {
  const req = (spec: object) => ApplyPodRequest.fromPartial({ pod: Pod.fromPartial({ metadata: { name: 'p' }, spec }) });
  const field = (spec: object) => {
    try {
      validateApply(req(spec));
      return undefined;
    } catch (err) {
      return err instanceof InvalidPodError ? err.field : String(err);
    }
  };
  it('refuses bad specs', () => {
    expect(field({ containers: [] })).toBe('spec.containers');
    expect(field({ containers: [{ name: 'A', image: 'x' }] })).toBe('spec.containers[0].name');
    expect(
      field({
        containers: [
          { name: 'a', image: 'x' },
          { name: 'a', image: 'x' },
        ],
      }),
    ).toBe('spec.containers[1].name');
    expect(field({ containers: [{ name: 'a', image: 'x', volumeMounts: [{ name: 'v', mountPath: '/v' }] }] })).toBe('spec.containers[0].volumeMounts[0].name');
    expect(
      field({ volumes: [{ name: 'v', source: { $case: 'emptyDir', value: {} } }], containers: [{ name: 'a', image: 'x', volumeMounts: [{ name: 'v', mountPath: 'rel' }] }] }),
    ).toBe('spec.containers[0].volumeMounts[0].mountPath');
    expect(
      field({ containers: [{ name: 'a', image: 'x', livenessProbe: { handler: { action: { $case: 'httpGet', value: { port: { value: { $case: 'name', value: 'web' } } } } } } }] }),
    ).toBe('spec.containers[0].livenessProbe.httpGet.port');
    expect(
      field({
        initContainers: [{ name: 'i', image: 'x', readinessProbe: { handler: { action: { $case: 'exec', value: { command: ['true'] } } } } }],
        containers: [{ name: 'a', image: 'x' }],
      }),
    ).toBe('spec.initContainers[0].readinessProbe');
    expect(field({ containers: [{ name: 'a', image: 'x' }] })).toBeUndefined();
  });
  it('refuses sidecar, stop-signal, sleep and os fields the API server refuses', () => {
    const always = ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS;
    const probe = { handler: { action: { $case: 'exec', value: { command: ['true'] } } } };
    expect(field({ containers: [{ name: 'a', image: 'x', restartPolicy: always }] })).toBe('spec.containers[0].restartPolicy');
    expect(field({ initContainers: [{ name: 'i', image: 'x', restartPolicy: always, readinessProbe: probe }], containers: [{ name: 'a', image: 'x' }] })).toBeUndefined();
    expect(field({ containers: [{ name: 'a', image: 'x', lifecycle: { stopSignal: 'SIGUSR1' } }] })).toBe('spec.containers[0].lifecycle.stopSignal');
    expect(field({ osName: 'linux', containers: [{ name: 'a', image: 'x', lifecycle: { stopSignal: 'SIGNOPE' } }] })).toBe('spec.containers[0].lifecycle.stopSignal');
    expect(field({ osName: 'linux', containers: [{ name: 'a', image: 'x', lifecycle: { stopSignal: 'SIGRTMIN+3' } }] })).toBeUndefined();
    expect(field({ osName: 'windows', containers: [{ name: 'a', image: 'x' }] })).toBe('spec.os.name');
    expect(field({ containers: [{ name: 'a', image: 'x', lifecycle: { preStop: { action: { $case: 'sleep', value: { seconds: -1 } } } } }] })).toBe(
      'spec.containers[0].lifecycle.preStop.sleep.seconds',
    );
  });
});
