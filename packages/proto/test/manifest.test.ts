import { describe, expect, it } from 'vitest';
import { ContainerRestartPolicy, HostPathType, PullPolicy, RestartPolicy, SeccompProfileType, StorageMedium, TerminationMessagePolicy } from '../src/cell.js';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { kubePod, kubePodSpec, ManifestError, podFromManifest, readManifests } from '../src/index.js';

const FULL = `
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: { app: web }
  annotations: { cello.dev/instance-type: "t3.*" }
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  activeDeadlineSeconds: 600
  hostname: web-0
  subdomain: svc
  dnsConfig: { nameservers: [1.1.1.1], searches: [example.com], options: [{ name: ndots, value: "2" }] }
  hostAliases: [{ ip: 10.0.0.1, hostnames: [db] }]
  imagePullSecrets: [{ name: regcred }]
  tolerations: [{ key: cello, operator: Exists }]   # accepted and ignored
  securityContext:
    fsGroup: 2000
    supplementalGroups: [3000]
    sysctls: [{ name: net.core.somaxconn, value: "1024" }]
    seccompProfile: { type: RuntimeDefault }
  initContainers:
    - name: init
      image: busybox:1.36
      command: [sh, -c, "echo hi > /work/hi"]
      volumeMounts: [{ name: work, mountPath: /work }]
  containers:
    - name: app
      image: 127.0.0.1:5000/web
      command: [httpd]
      args: [-f, -p, "8080"]
      workingDir: /srv
      env:
        - { name: PLAIN, value: "1" }
        - name: FROM_SECRET
          valueFrom: { secretKeyRef: { name: creds, key: password } }
        - name: FROM_CM
          valueFrom: { configMapKeyRef: { name: cfg, key: mode, optional: true } }
        - name: POD_IP
          valueFrom: { fieldRef: { fieldPath: status.podIP } }
        - name: MEM
          valueFrom: { resourceFieldRef: { resource: limits.memory, divisor: 1Mi } }
      envFrom: [{ prefix: CFG_, configMapRef: { name: cfg } }]
      ports: [{ name: http, containerPort: 8080 }, { containerPort: 53, protocol: UDP }]
      volumeMounts:
        - { name: work, mountPath: /work, readOnly: true }
        - { name: creds, mountPath: /etc/creds/password, subPath: password }
        - { name: mem, mountPath: /tmp }
        - { name: all, mountPath: /all }
        - { name: host, mountPath: /host }
        - { name: info, mountPath: /info }
      resources:
        requests: { cpu: 250m, memory: 64Mi }
        limits: { cpu: "1", memory: 128Mi, nvidia.com/gpu: 1 }
      readinessProbe:
        httpGet: { path: /healthz, port: http, httpHeaders: [{ name: X-Probe, value: "1" }] }
        periodSeconds: 2
        failureThreshold: 1
      livenessProbe:
        tcpSocket: { port: 8080 }
        initialDelaySeconds: 3
      startupProbe:
        exec: { command: [cat, /tmp/ready] }
      lifecycle:
        preStop: { exec: { command: [sh, -c, "sleep 1"] } }
      securityContext:
        runAsUser: 1000
        runAsNonRoot: true
        readOnlyRootFilesystem: true
        capabilities: { add: [NET_BIND_SERVICE], drop: [ALL] }
        seccompProfile: { type: Localhost, localhostProfile: profiles/web.json }
      terminationMessagePolicy: FallbackToLogsOnError
      stdin: true
      tty: true
  volumes:
    - { name: work, emptyDir: {} }
    - { name: mem, emptyDir: { medium: Memory, sizeLimit: 16Mi } }
    - name: creds
      secret: { secretName: creds, defaultMode: 0400, items: [{ key: password, path: password, mode: 0440 }] }
    - name: all
      projected:
        sources:
          - configMap: { name: cfg }
          - serviceAccountToken: { path: token, expirationSeconds: 3600, audience: api }
          - downwardAPI: { items: [{ path: labels, fieldRef: { fieldPath: metadata.labels } }] }
    - { name: host, hostPath: { path: /var/log, type: Directory } }
    - name: info
      downwardAPI: { items: [{ path: cpu, resourceFieldRef: { containerName: app, resource: limits.cpu, divisor: 1m } }] }
---
apiVersion: v1
kind: Secret
metadata: { name: creds }
data: { password: aHVudGVyMg== }
stringData: { user: admin }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: cfg }
data: { mode: fast }
`;

describe('podFromManifest', () => {
  it('converts a full pod with its secret and configMap', () => {
    const { pod, secrets, configMaps } = podFromManifest(FULL);
    expect(pod.metadata).toMatchObject({ name: 'web', namespace: 'shop', labels: { app: 'web' } });
    const s = pod.spec!;
    expect(s.restartPolicy).toBe(RestartPolicy.RESTART_POLICY_ON_FAILURE);
    expect(s.terminationGracePeriodSeconds).toBe(5);
    expect(s.activeDeadlineSeconds).toBe(600);
    expect(s.dnsConfig?.options).toEqual([{ name: 'ndots', value: '2' }]);
    expect(s.imagePullSecrets).toEqual(['regcred']);
    expect(s.securityContext).toMatchObject({ fsGroup: 2000, supplementalGroups: [3000] });
    expect(s.initContainers.map((c) => c.name)).toEqual(['init']);
    expect(s.initContainers[0]!.imagePullPolicy).toBe(PullPolicy.PULL_POLICY_IF_NOT_PRESENT);

    const app = s.containers[0]!;
    expect(app.imagePullPolicy).toBe(PullPolicy.PULL_POLICY_ALWAYS); // untagged
    expect(app.resources?.requests).toEqual({ cpuMillis: 250, memoryBytes: 64 * 2 ** 20, extended: {} });
    expect(app.resources?.limits).toEqual({ cpuMillis: 1000, memoryBytes: 128 * 2 ** 20, extended: { 'nvidia.com/gpu': 1 } });
    expect(app.env.map((e) => e.valueFrom?.source?.$case ?? 'value')).toEqual(['value', 'secretKeyRef', 'configMapKeyRef', 'fieldRef', 'resourceFieldRef']);
    expect(app.readinessProbe?.handler?.action).toMatchObject({ $case: 'httpGet', value: { path: '/healthz', port: { value: { $case: 'name', value: 'http' } } } });
    expect(app.readinessProbe?.periodSeconds).toBe(2);
    expect(app.readinessProbe?.timeoutSeconds).toBeUndefined(); // default left to the agent
    expect(app.livenessProbe?.handler?.action).toMatchObject({ $case: 'tcpSocket', value: { port: { value: { $case: 'number', value: 8080 } } } });
    expect(app.startupProbe?.handler?.action?.$case).toBe('exec');
    expect(app.securityContext?.seccompProfile).toEqual({ type: SeccompProfileType.SECCOMP_PROFILE_TYPE_LOCALHOST, localhostProfile: 'profiles/web.json' });
    expect(app.securityContext?.capabilities).toEqual({ add: ['NET_BIND_SERVICE'], drop: ['ALL'] });
    expect(app.terminationMessagePolicy).toBe(TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FALLBACK_TO_LOGS_ON_ERROR);
    expect(app.terminationMessagePath).toBe('/dev/termination-log');
    expect(app.volumeMounts[1]).toEqual({ name: 'creds', mountPath: '/etc/creds/password', readOnly: false, subPath: 'password', subPathExpr: '' });

    const vols = Object.fromEntries(s.volumes.map((v) => [v.name, v.source]));
    expect(vols.mem).toEqual({ $case: 'emptyDir', value: { medium: StorageMedium.STORAGE_MEDIUM_MEMORY, sizeLimitBytes: 16 * 2 ** 20 } });
    expect(vols.creds).toEqual({
      $case: 'secret',
      value: { secretName: 'creds', defaultMode: 0o400, optional: false, items: [{ key: 'password', path: 'password', mode: 0o440 }] },
    });
    expect(vols.host).toEqual({ $case: 'hostPath', value: { path: '/var/log', type: HostPathType.HOST_PATH_TYPE_DIRECTORY } });
    expect(vols.all?.$case === 'projected' && vols.all.value.sources.map((x) => x.source?.$case)).toEqual(['configMap', 'serviceAccountToken', 'downwardApi']);

    expect(secrets.creds!.data).toEqual({ password: Buffer.from('hunter2'), user: Buffer.from('admin') });
    expect(configMaps.cfg!.data).toEqual({ mode: 'fast' });
  });

  it('takes JSON and objects, and defaults the namespace', () => {
    const obj = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers: [{ name: 'c', image: 'busybox:1' }] } };
    expect(podFromManifest(JSON.stringify(obj)).pod.metadata?.namespace).toBe('default');
    expect(podFromManifest(obj, { namespace: 'x' }).pod.metadata?.namespace).toBe('x');
    expect(podFromManifest(obj).pod.spec?.restartPolicy).toBe(RestartPolicy.RESTART_POLICY_ALWAYS);
  });

  it("keeps required node affinity (for the cell's architecture) and ignores the rest of affinity", () => {
    const affinity = {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: {
          nodeSelectorTerms: [
            {
              matchExpressions: [
                { key: 'kubernetes.io/arch', operator: 'In', values: ['arm64'] },
                { key: 'x', operator: 'Exists' },
              ],
            },
          ],
        },
        preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 1, preference: {} }],
      },
      podAntiAffinity: { requiredDuringSchedulingIgnoredDuringExecution: [] },
    };
    const obj = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { affinity, containers: [{ name: 'c', image: 'busybox:1' }] } };
    expect(podFromManifest(obj).pod.spec?.requiredNodeAffinity).toEqual([
      {
        matchExpressions: [
          { key: 'kubernetes.io/arch', operator: 'In', values: ['arm64'] },
          { key: 'x', operator: 'Exists', values: [] },
        ],
      },
    ]);
    expect(podFromManifest({ ...obj, spec: { containers: obj.spec.containers } }).pod.spec?.requiredNodeAffinity).toEqual([]);
    const bad = {
      ...obj,
      spec: {
        ...obj.spec,
        affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'k', operator: 'Near' }] }] } } },
      },
    };
    expect(() => podFromManifest(bad)).toThrow(
      'spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator: must be one of "In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"',
    );
  });

  it('hostNetwork is kept (its hostPorts default to, and must equal, its containerPorts); hostPID and hostIPC are refused naming the field', () => {
    const c = (ports: Record<string, unknown>[]) => ({ name: 'c', image: 'busybox:1', ports });
    const podWith = (spec: Record<string, unknown>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers: [c([])], ...spec } });
    const net = podFromManifest(podWith({ hostNetwork: true, containers: [c([{ containerPort: 8080 }])] })).pod.spec!;
    expect(net.hostNetwork).toBe(true);
    expect(net.containers[0]!.ports[0]!.hostPort).toBe(8080);
    expect(podFromManifest(podWith({})).pod.spec!.hostNetwork).toBe(false);
    expect(() => podFromManifest(podWith({ hostNetwork: true, containers: [c([{ containerPort: 80, hostPort: 8080 }])] }))).toThrow(
      'spec.containers[0].ports[0].hostPort: 8080 must match containerPort 80 when hostNetwork is true',
    );
    expect(() => podFromManifest(podWith({ hostPID: true }))).toThrow(/^spec\.hostPID: is not supported on a cell/);
    expect(() => podFromManifest(podWith({ hostIPC: true }))).toThrow(/^spec\.hostIPC: is not supported on a cell/);
    expect(podFromManifest(podWith({ hostPID: false, hostIPC: false })).pod.spec!.hostPid).toBe(false);
  });

  it('ephemeral containers (kubectl debug) convert with their target and come back in the v1 PodSpec', () => {
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'a' },
      spec: {
        containers: [{ name: 'app', image: 'busybox:1' }],
        ephemeralContainers: [{ name: 'debugger', image: 'busybox:1', command: ['sh'], stdin: true, tty: true, targetContainerName: 'app', resources: {}, ports: [] }],
      },
    };
    const spec = podFromManifest(pod).pod.spec!;
    expect(spec.ephemeralContainers.map((c) => [c.name, c.image, c.command, c.stdin, c.tty, c.targetContainerName])).toEqual([
      ['debugger', 'busybox:1', ['sh'], true, true, 'app'],
    ]);
    expect(spec.containers[0]!.targetContainerName).toBe('');
    expect(kubePodSpec(spec).ephemeralContainers).toMatchObject([{ name: 'debugger', image: 'busybox:1', command: ['sh'], targetContainerName: 'app' }]);
    expect(kubePodSpec(podFromManifest({ ...pod, spec: { containers: pod.spec.containers } }).pod.spec!).ephemeralContainers).toBeUndefined();
  });

  it('fields a cell cannot honour are refused naming the field; their harmless values are accepted', () => {
    const podWith = (spec: Record<string, unknown>, container: Record<string, unknown> = {}) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'a' },
      spec: { containers: [{ name: 'c', image: 'busybox:1', ...container }], volumes: [{ name: 'v', emptyDir: {} }], ...spec },
    });
    const refused: [Record<string, unknown>, Record<string, unknown>, RegExp][] = [
      [{ hostUsers: false }, {}, /^spec\.hostUsers: false \(a user namespace for the pod\) is not supported on a cell/],
      [{ setHostnameAsFQDN: true }, {}, /^spec\.setHostnameAsFQDN: true is not supported on a cell/],
      [
        { ephemeralContainers: [{ name: 'debugger', image: 'busybox', ports: [{ containerPort: 80 }] }] },
        {},
        /^spec\.ephemeralContainers\[0\]\.ports: may not be set for ephemeral containers/,
      ],
      [{ ephemeralContainers: [{ name: 'debugger', image: 'busybox', resources: { limits: { cpu: '1' } } }] }, {}, /^spec\.ephemeralContainers\[0\]\.resources: may not be set/],
      [
        { ephemeralContainers: [{ name: 'debugger', image: 'busybox', lifecycle: { preStop: { exec: { command: ['true'] } } } }] },
        {},
        /^spec\.ephemeralContainers\[0\]\.lifecycle: may not be set/,
      ],
      [
        { ephemeralContainers: [{ name: 'debugger', image: 'busybox', targetContainerName: 'nope' }] },
        {},
        /^spec\.ephemeralContainers\[0\]\.targetContainerName: "nope" names no container of the pod/,
      ],
      [{ ephemeralContainers: [{ name: 'c', image: 'busybox' }] }, {}, /^spec\.ephemeralContainers\[0\]\.name: duplicate container name "c"/],
      [{ resources: { limits: { cpu: '1' } } }, {}, /^spec\.resources: pod-level resources are not supported on a cell/],
      [{ resourceClaims: [{ name: 'gpu' }] }, {}, /^spec\.resourceClaims: dynamic resource allocation is not supported/],
      [{}, { resources: { claims: [{ name: 'gpu' }] } }, /^spec\.containers\[0\]\.resources\.claims: dynamic resource allocation/],
      [
        {},
        { volumeMounts: [{ name: 'v', mountPath: '/v', mountPropagation: 'Bidirectional' }] },
        /^spec\.containers\[0\]\.volumeMounts\[0\]\.mountPropagation: Bidirectional is not supported/,
      ],
      [{}, { volumeMounts: [{ name: 'v', mountPath: '/v', mountPropagation: 'HostToContainer' }] }, /^spec\.containers\[0\]\.volumeMounts\[0\]\.mountPropagation: HostToContainer/],
      [{}, { volumeDevices: [{ name: 'v', devicePath: '/dev/xvda' }] }, /^spec\.containers\[0\]\.volumeDevices: raw block devices are not supported/],
      [{}, { securityContext: { procMount: 'Unmasked' } }, /^spec\.containers\[0\]\.securityContext\.procMount: Unmasked is not supported/],
      [
        {},
        { securityContext: { appArmorProfile: { type: 'RuntimeDefault' } } },
        /^spec\.containers\[0\]\.securityContext\.appArmorProfile\.type: RuntimeDefault: cannot enforce AppArmor/,
      ],
      [
        { securityContext: { appArmorProfile: { type: 'Localhost', localhostProfile: 'p' } } },
        {},
        /^spec\.securityContext\.appArmorProfile\.type: Localhost: cannot enforce AppArmor/,
      ],
      [
        { volumes: [{ name: 'v', projected: { sources: [{ clusterTrustBundle: { name: 'b', path: 'ca.pem' } }] } }] },
        {},
        /^spec\.volumes\[0\]\.projected\.sources\[0\]\.clusterTrustBundle: ClusterTrustBundle projections are not supported/,
      ],
      [{}, { securityContext: { procMount: 'Sideways' } }, /^spec\.containers\[0\]\.securityContext\.procMount: must be one of "Default", "Unmasked"/],
      [{ runtimeClassName: 'gvisor' }, {}, /^spec\.runtimeClassName: gvisor: RuntimeClasses are not supported on a cell/],
      [{ overhead: { cpu: '250m' } }, {}, /^spec\.overhead: pod overhead \(a RuntimeClass's\) is not supported on a cell/],
      [{ securityContext: { supplementalGroupsPolicy: 'Loose' } }, {}, /^spec\.securityContext\.supplementalGroupsPolicy: must be one of "Merge", "Strict"/],
      [{ securityContext: { fsGroupChangePolicy: 'Never' } }, {}, /^spec\.securityContext\.fsGroupChangePolicy: must be one of "OnRootMismatch", "Always"/],
      [{ securityContext: { seLinuxChangePolicy: 'Sometimes' } }, {}, /^spec\.securityContext\.seLinuxChangePolicy: must be one of "MountOption", "Recursive"/],
      [
        {},
        { volumeMounts: [{ name: 'v', mountPath: '/v', recursiveReadOnly: 'Enabled' }] },
        /^spec\.containers\[0\]\.volumeMounts\[0\]\.recursiveReadOnly: Enabled requires readOnly: true/,
      ],
      [
        {},
        { volumeMounts: [{ name: 'v', mountPath: '/v', readOnly: false, recursiveReadOnly: 'IfPossible' }] },
        /^spec\.containers\[0\]\.volumeMounts\[0\]\.recursiveReadOnly: IfPossible requires readOnly: true/,
      ],
      [
        { volumes: [{ name: 'v', hostPath: { path: '/srv' } }] },
        { volumeMounts: [{ name: 'v', mountPath: '/v', readOnly: true, recursiveReadOnly: 'Enabled' }] },
        /^spec\.containers\[0\]\.volumeMounts\[0\]\.recursiveReadOnly: Enabled is not supported on a hostPath volume on a cell/,
      ],
      [
        {},
        { volumeMounts: [{ name: 'v', mountPath: '/v', readOnly: true, recursiveReadOnly: 'Always' }] },
        /^spec\.containers\[0\]\.volumeMounts\[0\]\.recursiveReadOnly: must be one of/,
      ],
    ];
    for (const [spec, container, message] of refused) expect(() => podFromManifest(podWith(spec, container)), JSON.stringify([spec, container])).toThrow(message);
    // What a kubelet on a node without SELinux or AppArmor runs as asked (or, for the rest, means nothing to it).
    const ok = podWith(
      {
        hostUsers: true,
        setHostnameAsFQDN: false,
        ephemeralContainers: [],
        enableServiceLinks: false,
        automountServiceAccountToken: false,
        readinessGates: [{ conditionType: 'example.com/ready' }],
        securityContext: {
          appArmorProfile: { type: 'Unconfined' },
          seLinuxOptions: { level: 's0:c1,c2' },
          seLinuxChangePolicy: 'Recursive',
          fsGroup: 2000,
          fsGroupChangePolicy: 'OnRootMismatch',
          supplementalGroupsPolicy: 'Merge',
        },
        runtimeClassName: '',
        overhead: {},
      },
      {
        volumeMounts: [
          { name: 'v', mountPath: '/v', mountPropagation: 'None', readOnly: true, recursiveReadOnly: 'Enabled' },
          { name: 'v', mountPath: '/w', readOnly: true, recursiveReadOnly: 'IfPossible' },
          { name: 'v', mountPath: '/x', recursiveReadOnly: 'Disabled' },
        ],
        securityContext: { procMount: 'Default', seLinuxOptions: { type: 'spc_t' } },
        resizePolicy: [{ resourceName: 'cpu', restartPolicy: 'NotRequired' }],
      },
    );
    expect(podFromManifest(ok).pod.metadata!.name).toBe('a');
    // IfPossible on a hostPath: read-only, its submounts as they are (what IfPossible allows).
    const hostPathIfPossible = podWith(
      { volumes: [{ name: 'v', hostPath: { path: '/srv' } }] },
      { volumeMounts: [{ name: 'v', mountPath: '/v', readOnly: true, recursiveReadOnly: 'IfPossible' }] },
    );
    expect(podFromManifest(hostPathIfPossible).pod.spec!.containers[0]!.volumeMounts[0]!.readOnly).toBe(true);
    // supplementalGroupsPolicy reaches the agent (which honours Strict), and prints back for kubectl.
    const strict = podFromManifest(podWith({ securityContext: { supplementalGroups: [7], supplementalGroupsPolicy: 'Strict' } })).pod;
    expect(strict.spec!.securityContext!.supplementalGroupsPolicy).toBe('Strict');
    expect(kubePodSpec(strict.spec!).securityContext).toMatchObject({ supplementalGroups: [7], supplementalGroupsPolicy: 'Strict' });
    expect(podFromManifest(ok).pod.spec!.securityContext!.supplementalGroupsPolicy).toBe('Merge');
    expect(() => podFromManifest(podWith({ readinessGates: [{ type: 'x' }] }))).toThrow(/^spec\.readinessGates\[0\]/);
  });

  it("securityContext.cri (cello-cri's CRI fields): the lists as given (empty: none), absent: the cell's defaults", () => {
    const podWith = (cri: Record<string, unknown> | undefined) =>
      podFromManifest({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers: [{ name: 'c', image: 'b', securityContext: { ...(cri ? { cri } : {}) } }] } })
        .pod.spec!.containers[0]!.securityContext!;
    const given = podWith({ maskedPaths: ['/bin/ls'], readonlyPaths: [], runAsUsername: 'app', supplementalGroups: [1234, 5678], supplementalGroupsPolicy: 'Strict' });
    expect(given.cri).toEqual({ procPaths: { masked: ['/bin/ls'], readonly: [] }, runAsUsername: 'app', supplementalGroups: [1234, 5678], supplementalGroupsPolicy: 'Strict' });
    // Only one list given: the other is empty too (the CRI's two lists travel together).
    expect(podWith({ readonlyPaths: ['/tmp'] }).cri!.procPaths).toEqual({ masked: [], readonly: ['/tmp'] });
    expect(podWith({ runAsUsername: 'app' }).cri!.procPaths).toBeUndefined();
    expect(podWith(undefined).cri).toBeUndefined();
    // Printed back for cellctl, and read again to the same pod.
    const full = podFromManifest({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'a' },
      spec: { containers: [{ name: 'c', image: 'b:1', securityContext: { cri: { maskedPaths: [], readonlyPaths: ['/tmp'], runAsUsername: 'app', supplementalGroups: [7] } } }] },
    }).pod;
    expect(podFromManifest(stringify(kubePod(full))).pod).toEqual(full);
    for (const [cri, err] of [
      [{ maskedPaths: ['proc/kcore'] }, /^spec\.containers\[0\]\.securityContext\.cri\.maskedPaths\[0\]: "proc\/kcore": must be an absolute path/],
      [{ readonlyPaths: ['/tmp', '/a/../etc'] }, /^spec\.containers\[0\]\.securityContext\.cri\.readonlyPaths\[1\]: .*without '\.\.'/],
      [{ runAsUsername: 'a:b' }, /^spec\.containers\[0\]\.securityContext\.cri\.runAsUsername: "a:b": must be a user name/],
      [{ supplementalGroupsPolicy: 'Loose' }, /^spec\.containers\[0\]\.securityContext\.cri\.supplementalGroupsPolicy/],
      [{ maskPaths: [] }, /^spec\.containers\[0\]\.securityContext\.cri/],
    ] as const)
      expect(() => podWith(cri)).toThrow(err);
  });

  it('hostPort and hostIP: one claim per hostPort and protocol (per address), across containers', () => {
    const podWith = (containers: Record<string, unknown>[]) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers } });
    const port = (p: Record<string, unknown>) => ({ containerPort: 80, ...p });
    const ok = podFromManifest(
      podWith([
        { name: 'a', image: 'b', ports: [port({ hostPort: 9000 }), port({ containerPort: 53, hostPort: 9000, protocol: 'UDP' })] },
        { name: 'b', image: 'b', ports: [port({ hostPort: 9001, hostIP: '10.0.0.5' }), port({ containerPort: 81, hostPort: 9001, hostIP: '10.0.0.6' })] },
      ]),
    ).pod.spec!;
    expect(ok.containers[1]!.ports.map((p) => p.hostIp)).toEqual(['10.0.0.5', '10.0.0.6']);
    expect(() =>
      podFromManifest(
        podWith([
          { name: 'a', image: 'b', ports: [port({ hostPort: 9000 })] },
          { name: 'b', image: 'b', ports: [port({ hostPort: 9000 })] },
        ]),
      ),
    ).toThrow('spec.containers[1].ports[0].hostPort: TCP/9000 is already claimed by spec.containers[0].ports[0].hostPort');
    expect(() => podFromManifest(podWith([{ name: 'a', image: 'b', ports: [port({ hostPort: 9000, hostIP: '10.0.0.5' }), port({ containerPort: 81, hostPort: 9000 })] }]))).toThrow(
      'spec.containers[0].ports[1].hostPort: TCP/9000 is already claimed by spec.containers[0].ports[0].hostPort',
    );
    expect(() => podFromManifest(podWith([{ name: 'a', image: 'b', ports: [port({ hostIP: '10.0.0.5' })] }]))).toThrow(
      'spec.containers[0].ports[0].hostIP: may only be set together with hostPort',
    );
    expect(() => podFromManifest(podWith([{ name: 'a', image: 'b', ports: [port({ hostPort: 1, hostIP: '::1' })] }]))).toThrow(/hostIP: "::1" is not an IPv4 address/);
  });

  it('reads a v1 List and skips empty documents', () => {
    const list = `---\n---\n${JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, data: { a: 'b' } }] })}\n`;
    expect(readManifests(list)).toEqual([{ kind: 'ConfigMap', name: 'c', namespace: 'default', data: { data: { a: 'b' }, binaryData: {} } }]);
  });
});

const base = (spec: string, meta = 'name: p') => `apiVersion: v1\nkind: Pod\nmetadata: { ${meta} }\nspec:\n${spec}`;
const one = (container: string, extra = '') => base(`  containers:\n    - name: c\n      image: busybox:1\n${container}${extra}`);

describe('malformed manifests name the field', () => {
  it.each<[string, string, string | RegExp]>([
    ['not yaml', 'a: [1, 2', /not valid YAML/],
    ['wrong kind', 'apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n', 'kind'],
    ['wrong apiVersion', 'apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}', 'apiVersion'],
    ['missing name', base('  containers: [{name: c, image: b}]', 'labels: {}'), 'metadata.name'],
    ['bad name', base('  containers: [{name: c, image: b}]', 'name: Web_1'), 'metadata.name'],
    ['no containers', base('  containers: []'), 'spec.containers'],
    ['missing containers', base('  restartPolicy: Never'), 'spec.containers'],
    ['missing image', base('  containers: [{name: c}]'), 'spec.containers[0].image'],
    ['bad container name', base('  containers: [{name: C!, image: b}]'), 'spec.containers[0].name'],
    ['duplicate container', base('  initContainers: [{name: c, image: b}]\n  containers: [{name: c, image: b}]'), 'spec.containers[0].name'],
    ['misspelt field', one('      imagePulPolicy: Always\n'), 'spec.containers[0].imagePulPolicy'],
    ['bad enum', one('      imagePullPolicy: Sometimes\n'), 'spec.containers[0].imagePullPolicy'],
    ['bad restart policy', base('  restartPolicy: Maybe\n  containers: [{name: c, image: b}]'), 'spec.restartPolicy'],
    ['bad memory', one('      resources: {limits: {memory: 12 apples}}\n'), 'spec.containers[0].resources.limits.memory'],
    ['unknown resource', one('      resources: {limits: {gpu: 1}}\n'), 'spec.containers[0].resources.limits.gpu'],
    ['requests above limits', one('      resources: {requests: {cpu: "2"}, limits: {cpu: "1"}}\n'), 'spec.containers[0].resources.requests.cpu'],
    ['port out of range', one('      ports: [{containerPort: 70000}]\n'), 'spec.containers[0].ports[0].containerPort'],
    ['port as string', one('      ports: [{containerPort: "80"}]\n'), 'spec.containers[0].ports[0].containerPort'],
    ['probe names unknown port', one('      readinessProbe: {httpGet: {port: web}}\n'), 'spec.containers[0].readinessProbe.httpGet.port'],
    ['probe with two handlers', one('      livenessProbe: {exec: {command: [x]}, tcpSocket: {port: 1}}\n'), 'spec.containers[0].livenessProbe'],
    ['probe with no handler', one('      livenessProbe: {periodSeconds: 3}\n'), 'spec.containers[0].livenessProbe'],
    ['probe period zero', one('      livenessProbe: {exec: {command: [x]}, periodSeconds: 0}\n'), 'spec.containers[0].livenessProbe.periodSeconds'],
    ['mount of undeclared volume', one('      volumeMounts: [{name: v, mountPath: /v}]\n'), 'spec.containers[0].volumeMounts[0].name'],
    ['relative mountPath', one('      volumeMounts: [{name: v, mountPath: v}]\n', '  volumes: [{name: v, emptyDir: {}}]\n'), 'spec.containers[0].volumeMounts[0].mountPath'],
    [
      'subPath escapes',
      one('      volumeMounts: [{name: v, mountPath: /v, subPath: ../etc}]\n', '  volumes: [{name: v, emptyDir: {}}]\n'),
      'spec.containers[0].volumeMounts[0].subPath',
    ],
    ['item path escapes', one('', '  volumes: [{name: v, secret: {secretName: s, items: [{key: k, path: ../../x}]}}]\n'), 'spec.volumes[0].secret.items[0].path'],
    ['absolute item path', one('', '  volumes: [{name: v, configMap: {name: s, items: [{key: k, path: /x}]}}]\n'), 'spec.volumes[0].configMap.items[0].path'],
    ['volume with two sources', one('', '  volumes: [{name: v, emptyDir: {}, hostPath: {path: /x}}]\n'), 'spec.volumes[0]'],
    ['volume with no source', one('', '  volumes: [{name: v}]\n'), 'spec.volumes[0]'],
    ['bad mode', one('', '  volumes: [{name: v, secret: {secretName: s, defaultMode: 4096}}]\n'), 'spec.volumes[0].secret.defaultMode'],
    ['bad sizeLimit', one('', '  volumes: [{name: v, emptyDir: {sizeLimit: lots}}]\n'), 'spec.volumes[0].emptyDir.sizeLimit'],
    ['relative hostPath', one('', '  volumes: [{name: v, hostPath: {path: x}}]\n'), 'spec.volumes[0].hostPath.path'],
    ['env with value and valueFrom', one('      env: [{name: A, value: x, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]\n'), 'spec.containers[0].env[0].valueFrom'],
    ['env name with =', one('      env: [{name: "A=B", value: x}]\n'), 'spec.containers[0].env[0].name'],
    [
      'localhost seccomp without profile',
      one('      securityContext: {seccompProfile: {type: Localhost}}\n'),
      'spec.containers[0].securityContext.seccompProfile.localhostProfile',
    ],
    [
      'probe on init container',
      base('  initContainers: [{name: i, image: b, readinessProbe: {exec: {command: [x]}}}]\n  containers: [{name: c, image: b}]'),
      'spec.initContainers[0].readinessProbe',
    ],
    ['runAsUser as string', one('      securityContext: {runAsUser: root}\n'), 'spec.containers[0].securityContext.runAsUser'],
  ])('%s', (_name, text, field) => {
    let err: unknown;
    try {
      podFromManifest(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ManifestError);
    const me = err as ManifestError;
    if (typeof field === 'string') {
      expect(me.field).toBe(field);
      expect(me.message).toContain(field);
    } else expect(me.message).toMatch(field);
  });

  it('names the document in a multi-document file', () => {
    const text = `apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: "not base64!"}\n`;
    expect(() => readManifests(text)).toThrow(/document 1: data\.k: is not valid base64/);
  });
});

describe('kubePod: the proto pod back as a v1 Pod', () => {
  const examples = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'examples');
  const sources: [string, string][] = [
    ['the full pod', FULL],
    ...readdirSync(examples)
      .filter((f) => f.endsWith('.yaml'))
      .map((f): [string, string] => [f, readFileSync(join(examples, f), 'utf8')]),
  ];
  it.each(sources)('%s: printed as YAML and read back is the same pod', (_, text) => {
    const { pod } = podFromManifest(text);
    const printed = stringify(kubePod(pod));
    expect(podFromManifest(printed).pod).toEqual(pod);
  });

  it('prints what the API server prints: kind, enums and quantities as words', () => {
    const k = kubePod(podFromManifest(FULL).pod) as {
      apiVersion: string;
      kind: string;
      metadata: Record<string, unknown>;
      spec: { restartPolicy: string; containers: Record<string, unknown>[]; volumes: Record<string, unknown>[] };
    };
    expect(k.apiVersion).toBe('v1');
    expect(k.kind).toBe('Pod');
    expect(k.metadata).toMatchObject({ name: 'web', namespace: 'shop', labels: { app: 'web' } });
    expect(k.spec.restartPolicy).toBe('OnFailure');
    const app = k.spec.containers[0]!;
    expect(app.ports).toEqual([
      { name: 'http', containerPort: 8080, protocol: 'TCP' },
      { containerPort: 53, protocol: 'UDP' },
    ]);
    expect(app.resources).toEqual({ requests: { cpu: '250m', memory: '64Mi' }, limits: { cpu: '1', memory: '128Mi', 'nvidia.com/gpu': '1' } });
    expect(app.readinessProbe).toMatchObject({ httpGet: { path: '/healthz', port: 'http', scheme: 'HTTP' }, periodSeconds: 2 });
    expect(app.imagePullPolicy).toBe('Always');
    expect(app.terminationMessagePolicy).toBe('FallbackToLogsOnError');
    expect(k.spec.volumes).toContainEqual({ name: 'mem', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } });
    // No internal protobuf shapes leak out.
    expect(JSON.stringify(k)).not.toMatch(/PROTOCOL_|RESTART_POLICY_|cpuMillis|memoryBytes|"handler"|\$case/);
  });

  it('prints restartPolicy Always and protocol TCP when the manifest left them out', () => {
    const k = kubePod(podFromManifest(base('  containers:\n    - { name: c, image: busybox:1, ports: [{ containerPort: 80 }] }')).pod) as {
      spec: { restartPolicy: string; dnsPolicy: string; containers: { ports: unknown[]; imagePullPolicy: string }[] };
    };
    expect(k.spec.restartPolicy).toBe('Always');
    expect(k.spec.dnsPolicy).toBe('ClusterFirst');
    expect(k.spec.containers[0]!.ports).toEqual([{ containerPort: 80, protocol: 'TCP' }]);
    expect(k.spec.containers[0]!.imagePullPolicy).toBe('IfNotPresent');
  });
});

describe('sidecars, stop signals, sleep hooks and spec.os', () => {
  const podWith = (spec: Record<string, unknown>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers: [{ name: 'c', image: 'b' }], ...spec } });
  const sidecar = { name: 's', image: 'b', restartPolicy: 'Always', readinessProbe: { exec: { command: ['true'] } }, lifecycle: { preStop: { sleep: { seconds: 5 } } } };

  it('keeps them, and prints them back the same', () => {
    const m = podWith({
      os: { name: 'linux' },
      initContainers: [sidecar, { name: 'i', image: 'b' }],
      containers: [{ name: 'c', image: 'b', lifecycle: { stopSignal: 'SIGUSR1', postStart: { sleep: { seconds: 0 } } } }],
    });
    const { pod } = podFromManifest(m);
    const spec = pod.spec!;
    expect(spec.osName).toBe('linux');
    expect(spec.initContainers.map((c) => c.restartPolicy)).toEqual([
      ContainerRestartPolicy.CONTAINER_RESTART_POLICY_ALWAYS,
      ContainerRestartPolicy.CONTAINER_RESTART_POLICY_UNSPECIFIED,
    ]);
    expect(spec.initContainers[0]!.lifecycle?.preStop?.action).toEqual({ $case: 'sleep', value: { seconds: 5 } });
    expect(spec.containers[0]!.lifecycle?.stopSignal).toBe('SIGUSR1');
    expect(podFromManifest(stringify(kubePod(pod))).pod).toEqual(pod);
  });

  it('refuses what the API server refuses, naming the field', () => {
    const refused: [Record<string, unknown>, string | RegExp][] = [
      [{ initContainers: [{ ...sidecar, restartPolicy: 'Never' }] }, 'spec.initContainers[0].restartPolicy: unsupported value "Never": supported values: "Always"'],
      [{ containers: [{ name: 'c', image: 'b', restartPolicy: 'Always' }] }, 'spec.containers[0].restartPolicy: may not be set for non-init containers'],
      [
        { initContainers: [{ name: 'i', image: 'b', readinessProbe: { exec: { command: ['true'] } } }] },
        /^spec\.initContainers\[0\]\.readinessProbe: may not be set for init containers/,
      ],
      [
        { containers: [{ name: 'c', image: 'b', lifecycle: { stopSignal: 'SIGUSR1' } }] },
        'spec.containers[0].lifecycle.stopSignal: may not be set for containers with empty `spec.os.name`',
      ],
      [
        { os: { name: 'linux' }, containers: [{ name: 'c', image: 'b', lifecycle: { stopSignal: 'USR1' } }] },
        /^spec\.containers\[0\]\.lifecycle\.stopSignal: unsupported value "USR1"/,
      ],
      [{ os: { name: 'windows' } }, 'spec.os.name: "windows" is not supported: a cell runs Linux containers only'],
      [{ os: { name: 'plan9' } }, 'spec.os.name: unsupported value "plan9": supported values: "linux", "windows"'],
      [
        { containers: [{ name: 'c', image: 'b', lifecycle: { preStop: { sleep: { seconds: 31 } } } }] },
        'spec.containers[0].lifecycle.preStop.sleep.seconds: 31 must be less than terminationGracePeriodSeconds (30)',
      ],
      [
        { containers: [{ name: 'c', image: 'b', lifecycle: { postStart: { sleep: { seconds: -1 } } } }] },
        'spec.containers[0].lifecycle.postStart.sleep.seconds: -1 must be non-negative',
      ],
      [{ containers: [{ name: 'c', image: 'b', livenessProbe: { sleep: { seconds: 1 } } }] }, 'spec.containers[0].livenessProbe.sleep: unknown field "sleep"'],
    ];
    for (const [spec, msg] of refused) expect(() => podFromManifest(podWith(spec)), JSON.stringify(spec)).toThrow(msg);
  });
});
