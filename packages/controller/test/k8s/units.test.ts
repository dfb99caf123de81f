// The virtual node's pure parts: the work queue's guarantees and the status conversion.
import { describe, expect, it } from 'vitest';
import { ConditionStatus, PodPhase, PodStatus } from '@cello/proto/cell';
import { WorkQueue } from '../../src/util/workqueue.js';
import { kubeStatus, terminalStatus } from '../../src/k8s/node/status.js';
import { admissionRejection } from '../../src/k8s/node/admission.js';
import type { KPod } from '../../src/k8s/node/manifest.js';
import { derivedCapacity } from '../../src/k8s/from-config.js';
import { kubernetesConfigSchema } from '../../src/k8s/config.js';
import { parseConfig } from '../../src/config.js';

describe('WorkQueue', () => {
  it('never runs one key twice at once, coalesces adds, and re-runs a key changed while it ran', async () => {
    const runs: string[] = [];
    let active = 0;
    let maxActive = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const q = new WorkQueue(
      async (k) => {
        active++;
        maxActive = Math.max(maxActive, active);
        runs.push(k);
        if (runs.length === 1) await gate;
        active--;
      },
      () => undefined,
      { workers: 1 },
    );
    q.add('a');
    q.add('a'); // running: marked dirty
    q.add('a'); // still one re-run
    q.add('b');
    q.add('b'); // queued once
    release();
    await new Promise((r) => setTimeout(r, 20));
    await q.idle();
    // b was queued once however often it was added; a ran again after, for the adds during its run.
    expect(runs).toEqual(['a', 'b', 'a']);
    expect(maxActive).toBe(1);
    q.stop();
  });

  it('retries a failing key with exponential back-off and forgets the failures once it succeeds', async () => {
    const times: number[] = [];
    const delays: number[] = [];
    const q = new WorkQueue(
      async () => {
        times.push(Date.now());
        if (times.length < 4) throw new Error('not yet');
      },
      (_k, _e, ms) => delays.push(ms),
      { baseDelayMs: 20, maxDelayMs: 50 },
    );
    q.add('k');
    const deadline = Date.now() + 5000;
    while (times.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(times).toHaveLength(4);
    expect(delays).toEqual([20, 40, 50]);
    expect(times[3]! - times[2]!).toBeGreaterThanOrEqual(45);
    await q.idle();
    expect(q.retries('k')).toBe(0);
    q.stop();
  });
});

describe('kubeStatus', () => {
  it('reports an init container that ran to completion as ready (the conformance InitContainer specs read it), a failed one and a sidecar as the core says', () => {
    const done = { state: { $case: 'terminated' as const, value: { exitCode: 0, reason: 'Completed', signal: 0, containerId: '', message: '' } } };
    const failed = { state: { $case: 'terminated' as const, value: { exitCode: 1, reason: 'Error', signal: 0, containerId: '', message: '' } } };
    const s = PodStatus.fromPartial({
      phase: PodPhase.POD_PHASE_RUNNING,
      initContainerStatuses: [
        { name: 'init1', ready: false, state: done },
        { name: 'init2', ready: false, state: failed },
        { name: 'sidecar', ready: false, state: done },
      ],
    });
    const pod = { spec: { initContainers: [{ name: 'init1' }, { name: 'init2' }, { name: 'sidecar', restartPolicy: 'Always' }] } };
    const k = kubeStatus(s, pod, '192.0.2.1') as { initContainerStatuses: { name: string; ready: boolean }[] };
    expect(k.initContainerStatuses.map((c) => [c.name, c.ready])).toEqual([
      ['init1', true],
      ['init2', false],
      ['sidecar', false],
    ]);
  });

  it('writes a v1 PodStatus: phase, conditions without the core PodScheduled, one IP per family, states, nulls that clear stale fields', () => {
    const started = new Date('2026-01-02T03:04:05.678Z');
    const s = PodStatus.fromPartial({
      phase: PodPhase.POD_PHASE_RUNNING,
      podIp: '10.88.0.3',
      podIps: ['10.88.0.2', '10.88.0.3', 'fd00::3'],
      startTime: started,
      qosClass: 'Burstable',
      conditions: [
        { type: 'PodScheduled', status: ConditionStatus.CONDITION_STATUS_TRUE, lastTransitionTime: started },
        {
          type: 'Ready',
          status: ConditionStatus.CONDITION_STATUS_FALSE,
          reason: 'ContainersNotReady',
          message: 'containers with unready status: [main]',
          lastTransitionTime: started,
        },
        { type: 'Initialized', status: ConditionStatus.CONDITION_STATUS_TRUE, lastTransitionTime: started },
      ],
      containerStatuses: [
        {
          name: 'main',
          ready: false,
          restartCount: 2,
          containerId: 'abc',
          state: { state: { $case: 'running', value: { startedAt: started } } },
          lastState: {
            state: { $case: 'terminated', value: { exitCode: 137, reason: 'OOMKilled', signal: 9, startedAt: started, finishedAt: started, containerId: 'old', message: '' } },
          },
        },
      ],
    });
    const k = kubeStatus(s, { spec: { containers: [{ name: 'main', image: 'busybox:1' }] } }, '192.0.2.1') as Record<string, unknown>;
    expect(k).toMatchObject({
      phase: 'Running',
      podIP: '10.88.0.3',
      podIPs: [{ ip: '10.88.0.3' }, { ip: 'fd00::3' }],
      hostIP: '192.0.2.1',
      startTime: '2026-01-02T03:04:05Z',
      qosClass: 'Burstable',
      message: null,
      reason: null,
    });
    expect((k.conditions as { type: string }[]).map((c) => c.type)).toEqual(['Ready', 'Initialized']);
    expect((k.conditions as object[])[1]).toEqual({
      type: 'Initialized',
      status: 'True',
      reason: null,
      message: null,
      lastTransitionTime: '2026-01-02T03:04:05Z',
      lastProbeTime: null,
    });
    expect((k.containerStatuses as object[])[0]).toEqual({
      name: 'main',
      ready: false,
      restartCount: 2,
      image: 'busybox:1',
      imageID: '',
      containerID: 'cello://abc',
      state: { running: { startedAt: '2026-01-02T03:04:05Z' } },
      lastState: {
        terminated: {
          exitCode: 137,
          signal: 9,
          reason: 'OOMKilled',
          message: undefined,
          startedAt: '2026-01-02T03:04:05Z',
          finishedAt: '2026-01-02T03:04:05Z',
          containerID: 'old',
        },
      },
    });
  });
});

describe('kubernetes configuration', () => {
  it('is validated with errors naming the field, and derives capacity from the instance types', () => {
    expect(() =>
      parseConfig({
        controllerId: 'x',
        security: { mode: 'insecure-dev' },
        kubernetes: { enabled: true, nodeName: 'Bad_Name', kubelet: { certFile: 'c', keyFile: 'k', clientCAFile: 'ca' } },
      }),
    ).toThrow(/kubernetes\.nodeName: expected a DNS name/);
    expect(() => parseConfig({ controllerId: 'x', security: { mode: 'insecure-dev' }, kubernetes: { enabled: true } })).toThrow(/kubernetes\.kubelet: /);
    expect(() =>
      parseConfig({
        controllerId: 'x',
        security: { mode: 'insecure-dev' },
        kubernetes: { kubelet: { certFile: 'c', keyFile: 'k', clientCAFile: 'ca' }, capacity: { cpu: 'lots', memory: '1Gi', pods: 1 } },
      }),
    ).toThrow(/kubernetes\.capacity\.cpu: expected a Kubernetes quantity/);
    const k = kubernetesConfigSchema.parse({ kubelet: { certFile: 'c', keyFile: 'k', clientCAFile: 'ca' } });
    expect(k).toMatchObject({
      enabled: false,
      nodeName: 'cello',
      taint: { key: 'virtual-kubelet.io/provider', effect: 'NoSchedule' },
      leaderElection: { enabled: true },
      tokenRefreshRatio: 0.8,
      dataSyncSeconds: 60,
    });
    expect(() =>
      parseConfig({ controllerId: 'x', security: { mode: 'insecure-dev' }, kubernetes: { kubelet: { certFile: 'c', keyFile: 'k', clientCAFile: 'ca' }, tokenRefreshRatio: 1 } }),
    ).toThrow(/kubernetes\.tokenRefreshRatio: must be less than 1/);
    expect(
      derivedCapacity(
        [
          { name: 'a', vcpus: 2, memoryMiB: 4096, gpus: 0, onDemandHourlyUsd: 1, arch: 'amd64' },
          { name: 'b', vcpus: 8, memoryMiB: 32768, gpus: 1, onDemandHourlyUsd: 2, arch: 'amd64' },
        ],
        10,
      ),
    ).toEqual({ cpu: '80', memory: '327680Mi', pods: '10', 'nvidia.com/gpu': '10' });
  });
});

describe('projected token refresh schedule', () => {
  it('refreshes after the given fraction of the lifetime, and at least daily', async () => {
    const { tokenRefreshAt, MAX_TOKEN_AGE_MS } = await import('../../src/k8s/node/manifest.js');
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    // The kubelet's 80 %: a 1 h token is refreshed after 48 min, a 10 min one after 8 min.
    expect(tokenRefreshAt(t0, t0 + 3600_000, 0.8) - t0).toBe(48 * 60_000);
    expect(tokenRefreshAt(t0, t0 + 600_000, 0.8) - t0).toBe(480_000);
    expect(tokenRefreshAt(t0, t0 + 600_000, 0.005) - t0).toBe(3000);
    // A token the API server extended to a year (--service-account-extend-token-expiration) is still refreshed daily.
    expect(tokenRefreshAt(t0, t0 + 365 * 86400_000, 0.8) - t0).toBe(MAX_TOKEN_AGE_MS);
    // An already expired one: at once.
    expect(tokenRefreshAt(t0, t0 - 1, 0.8)).toBe(t0);
  });
});

describe('terminalStatus (a deleted pod whose cell is gone)', () => {
  const at = new Date('2026-12-08T01:00:00Z');
  it('is Failed with a container still running reported as ContainerStatusUnknown, as the kubelet writes it', () => {
    const running = { name: 'c', image: 'busybox', imageID: 'sha256:x', ready: true, started: true, restartCount: 0, state: { running: { startedAt: '2026-12-08T00:59:00Z' } } };
    const s = terminalStatus({ phase: 'Running', containerStatuses: [running] }, at);
    expect(s.phase).toBe('Failed');
    expect(s.containerStatuses).toEqual([
      {
        ...running,
        ready: false,
        started: false,
        lastState: running.state,
        state: { terminated: { exitCode: 137, reason: 'ContainerStatusUnknown', message: 'The container could not be located when the pod was terminated' } },
      },
    ]);
    expect(s.conditions).toEqual([
      { type: 'Ready', status: 'False', reason: 'PodCompleted', lastTransitionTime: '2026-12-08T01:00:00Z', lastProbeTime: null },
      { type: 'ContainersReady', status: 'False', reason: 'PodCompleted', lastTransitionTime: '2026-12-08T01:00:00Z', lastProbeTime: null },
    ]);
  });

  it('is Succeeded only when every container ended with 0, and keeps their own terminated states', () => {
    const ok = (name: string, exitCode: number) => ({ name, ready: false, restartCount: 0, state: { terminated: { exitCode, reason: exitCode ? 'Error' : 'Completed' } } });
    expect(terminalStatus({ containerStatuses: [ok('a', 0), ok('b', 0)] }, at)).toMatchObject({
      phase: 'Succeeded',
      containerStatuses: [ok('a', 0), ok('b', 0)].map((c) => ({ ...c, started: false })),
    });
    expect(terminalStatus({ containerStatuses: [ok('a', 0), ok('b', 143)] }, at).phase).toBe('Failed');
    // Never started at all (no statuses): nothing succeeded.
    expect(terminalStatus(undefined, at).phase).toBe('Failed');
  });
});

describe('admissionRejection (host ports, as the kubelet admits a pod bound to its node)', () => {
  type Port = { hostPort?: number; hostIP?: string; protocol?: string; containerPort: number };
  const pod = (name: string, ports: Port[], init: { ports: Port[]; restartPolicy?: string }[] = []): KPod => ({
    metadata: { name, namespace: 'default', uid: name },
    spec: {
      containers: [{ name: 'main', ports }],
      initContainers: init.map((c, i) => ({ name: `init${i}`, ...c })),
    },
  });
  const holder = pod('holder', [{ hostPort: 8080, containerPort: 80 }]);

  it('rejects the same port and protocol on any address when one side is 0.0.0.0 or unset, naming the holder', () => {
    const r = admissionRejection(pod('p', [{ hostPort: 8080, hostIP: '10.1.2.3', containerPort: 81 }]), [holder]);
    expect(r).toEqual({
      reason: 'NodePorts',
      message: "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports (TCP 10.1.2.3:8080 is held by pod holder)",
    });
    expect(
      admissionRejection(pod('p', [{ hostPort: 8080, hostIP: '0.0.0.0', containerPort: 80 }]), [pod('h', [{ hostPort: 8080, hostIP: '127.0.0.1', containerPort: 80 }])])?.reason,
    ).toBe('NodePorts');
  });

  it('admits another protocol, another address when both are specific, another port, a pod without host ports, and an empty node', () => {
    expect(admissionRejection(pod('p', [{ hostPort: 8080, protocol: 'UDP', containerPort: 80 }]), [holder])).toBeUndefined();
    const specific = pod('h', [{ hostPort: 8080, hostIP: '127.0.0.1', containerPort: 80 }]);
    expect(admissionRejection(pod('p', [{ hostPort: 8080, hostIP: '127.0.0.2', containerPort: 80 }]), [specific])).toBeUndefined();
    expect(admissionRejection(pod('p', [{ hostPort: 8081, containerPort: 80 }]), [holder])).toBeUndefined();
    expect(admissionRejection(pod('p', [{ containerPort: 8080 }]), [holder])).toBeUndefined();
    expect(admissionRejection(pod('p', [{ hostPort: 8080, containerPort: 80 }]), [])).toBeUndefined();
  });

  it("counts a sidecar's (restartable init container's) host ports, not a plain init container's", () => {
    const sidecar = pod('s', [], [{ ports: [{ hostPort: 9000, containerPort: 9000 }], restartPolicy: 'Always' }]);
    const plainInit = pod('i', [], [{ ports: [{ hostPort: 9000, containerPort: 9000 }] }]);
    const wants = pod('p', [{ hostPort: 9000, containerPort: 9000 }]);
    expect(admissionRejection(wants, [sidecar])?.reason).toBe('NodePorts');
    expect(admissionRejection(wants, [plainInit])).toBeUndefined();
    expect(admissionRejection(sidecar, [pod('h', [{ hostPort: 9000, containerPort: 1 }])])?.reason).toBe('NodePorts');
  });
});
