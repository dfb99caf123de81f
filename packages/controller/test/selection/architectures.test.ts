// Which architectures may serve a pod (pure: the platforms come in already read), how selection
// applies them to the catalog, and how the virtual node names what it serves.
import { describe, expect, it } from 'vitest';
import { PodSpec } from '@cello/proto/cell';
import { allowedArchitectures, podImages } from '../../src/selection/architectures.js';
import { selectCandidates, SelectionError } from '../../src/selection/selection.js';
import { nodeArchitecture, VirtualNode } from '../../src/k8s/node/node.js';
import type { KubeRest } from '../../src/k8s/client/rest.js';
import type { InstanceType } from '../../src/providers/provider.js';

const amd = { digest: 'sha256:a', platforms: [{ os: 'linux', architecture: 'amd64' }] };
const arm = { digest: 'sha256:b', platforms: [{ os: 'linux', architecture: 'arm64', variant: 'v8' }] };
const both = { digest: 'sha256:c', platforms: [...amd.platforms, ...arm.platforms] };
const spec = (nodeSelector: Record<string, string> = {}) =>
  PodSpec.fromPartial({
    containers: [
      { name: 'a', image: 'r/a' },
      { name: 'b', image: 'r/b' },
    ],
    initContainers: [{ name: 'i', image: 'r/a' }],
    nodeSelector,
  });

describe('allowedArchitectures', () => {
  it('every image counts, init containers too, each once', () => {
    expect(podImages(spec())).toEqual(['r/a', 'r/b']);
    expect(
      allowedArchitectures({
        spec: spec(),
        images: new Map([
          ['r/a', both],
          ['r/b', both],
        ]),
        provider: ['amd64', 'arm64'],
      }),
    ).toEqual(['amd64', 'arm64']);
    expect(
      allowedArchitectures({
        spec: spec(),
        images: new Map([
          ['r/a', both],
          ['r/b', arm],
        ]),
        provider: ['amd64', 'arm64'],
      }),
    ).toEqual(['arm64']);
  });

  it('without image platforms, the node selector and the provider decide', () => {
    expect(allowedArchitectures({ spec: spec(), provider: ['amd64', 'arm64'] })).toEqual(['amd64', 'arm64']);
    expect(allowedArchitectures({ spec: spec({ 'kubernetes.io/arch': 'arm64' }), provider: ['amd64', 'arm64'] })).toEqual(['arm64']);
    expect(allowedArchitectures({ spec: spec({ 'cello.dev/arch-arm64': 'true' }), provider: ['amd64', 'arm64'] })).toEqual(['arm64']);
    expect(allowedArchitectures({ spec: spec({ 'beta.kubernetes.io/arch': 'amd64' }), provider: ['amd64', 'arm64'] })).toEqual(['amd64']);
  });

  it('no fit: a SelectionError naming every constraint, images with their platforms', () => {
    const err = (() => {
      try {
        allowedArchitectures({
          spec: spec(),
          images: new Map([
            ['r/a', amd],
            ['r/b', arm],
          ]),
          provider: ['amd64', 'arm64'],
        });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(SelectionError);
    expect((err as SelectionError).reason).toBe('NoMatchingArchitecture');
    expect((err as Error).message).toBe(
      'no cell architecture can run this pod: image r/a is linux/amd64; image r/b is linux/arm64/v8; this provider has cell images for amd64, arm64',
    );
    expect(() => allowedArchitectures({ spec: spec({ 'kubernetes.io/arch': 's390x' }), provider: ['amd64'] })).toThrow(
      'no cell architecture can run this pod: nodeSelector kubernetes.io/arch: s390x; this provider has cell images for amd64',
    );
    expect(() => allowedArchitectures({ spec: spec(), provider: [] })).toThrow('this provider has cell images for no architecture');
  });
});

describe('selectCandidates with architectures', () => {
  const t = (name: string, arch: 'amd64' | 'arm64', usd: number): InstanceType => ({ name, vcpus: 2, memoryMiB: 2048, gpus: 0, onDemandHourlyUsd: usd, arch });
  const types = [t('g.small', 'arm64', 0.01), t('x.small', 'amd64', 0.02)];
  const input = { spec: spec(), annotations: {}, overhead: { cpuMillis: 100, memoryBytes: 0 }, defaultSpot: 'never' as const };

  it('types of other architectures are left out, however cheap', () => {
    expect(selectCandidates(types, input).map((c) => c.type.name)).toEqual(['g.small', 'x.small']);
    expect(selectCandidates(types, { ...input, architectures: ['amd64'] }).map((c) => c.type.name)).toEqual(['x.small']);
  });

  it('a pinned type of the wrong architecture: no fit, and the reason says why', () => {
    expect(() => selectCandidates(types, { ...input, annotations: { 'cello.io/instance-type': 'g.*' }, architectures: ['amd64'] })).toThrow(
      /no instance type fits .*: g\.small: arm64 cannot run the pod's images \(needs amd64\)/,
    );
  });
});

describe("the virtual node's architecture", () => {
  // labels() and the status read only the options: the REST client is never called here.
  const node = (architectures?: string[]) =>
    new VirtualNode({} as KubeRest, {
      nodeName: 'n',
      providerName: 'aws',
      internalIP: '127.0.0.1',
      kubeletPort: 1,
      capacity: async () => ({ capacity: { cpu: '1', memory: '1Mi', pods: '1' }, allocatable: { cpu: '1', memory: '1Mi', pods: '1' } }),
      health: async () => undefined,
      version: 'x',
      onError: () => undefined,
      ...(architectures ? { architectures } : {}),
    });

  it('one kubernetes.io/arch (amd64 when served), and one cello.dev/arch-* label per architecture', () => {
    expect(nodeArchitecture(['amd64', 'arm64'])).toBe('amd64');
    expect(nodeArchitecture(['arm64'])).toBe('arm64');
    expect(node(['amd64', 'arm64']).labels()).toMatchObject({
      'kubernetes.io/arch': 'amd64',
      'beta.kubernetes.io/arch': 'amd64',
      'cello.dev/arch-amd64': 'true',
      'cello.dev/arch-arm64': 'true',
    });
    const armOnly = node(['arm64']).labels();
    expect(armOnly).toMatchObject({ 'kubernetes.io/arch': 'arm64', 'cello.dev/arch-arm64': 'true' });
    expect(armOnly['cello.dev/arch-amd64']).toBeUndefined();
  });
});

describe('required node affinity', () => {
  const withAffinity = (terms: Array<Array<{ key: string; operator: string; values?: string[] }>>) =>
    PodSpec.fromPartial({ containers: [{ name: 'a', image: 'r/a' }], requiredNodeAffinity: terms.map((t) => ({ matchExpressions: t.map((e) => ({ values: [], ...e })) })) });

  it('In, NotIn and terms ORed, as the kube-scheduler reads them; other keys are left to it', () => {
    const both = ['amd64', 'arm64'] as const;
    expect(allowedArchitectures({ spec: withAffinity([[{ key: 'kubernetes.io/arch', operator: 'In', values: ['arm64'] }]]), provider: both })).toEqual(['arm64']);
    expect(allowedArchitectures({ spec: withAffinity([[{ key: 'kubernetes.io/arch', operator: 'NotIn', values: ['arm64'] }]]), provider: both })).toEqual(['amd64']);
    expect(allowedArchitectures({ spec: withAffinity([[{ key: 'topology.kubernetes.io/zone', operator: 'In', values: ['a'] }]]), provider: both })).toEqual(['amd64', 'arm64']);
    expect(
      allowedArchitectures({
        spec: withAffinity([
          [
            { key: 'kubernetes.io/arch', operator: 'In', values: ['arm64'] },
            { key: 'zone', operator: 'Exists' },
          ],
          [{ key: 'kubernetes.io/arch', operator: 'In', values: ['amd64'] }],
        ]),
        provider: both,
      }),
    ).toEqual(['amd64', 'arm64']);
  });

  it('with an amd64-only image and arm64 required: a message naming both', () => {
    expect(() =>
      allowedArchitectures({
        spec: withAffinity([[{ key: 'kubernetes.io/arch', operator: 'In', values: ['arm64'] }]]),
        images: new Map([['r/a', amd]]),
        provider: ['amd64', 'arm64'],
      }),
    ).toThrow('no cell architecture can run this pod: required node affinity allows arm64; image r/a is linux/amd64; this provider has cell images for amd64, arm64');
  });
});
