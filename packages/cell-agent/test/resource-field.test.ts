// Downward API resourceFieldRef values, as the kubelet computes them from what the API server
// stores (divisors serialized as "1Mi" / "1m", an unset divisor as the zero quantity "0").
import { cpus, totalmem } from 'node:os';
import { describe, expect, it } from 'vitest';
import { Pod } from '@cello/proto/cell';
import { resourceValue } from '../src/pod/volumes.js';

const pod = (resources: object) => Pod.fromPartial({ metadata: { name: 'p' }, spec: { containers: [{ name: 'c', resources }] } });
const sized = pod({ limits: { cpuMillis: 1250, memoryBytes: 64 * 1024 ** 2 }, requests: { cpuMillis: 250, memoryBytes: 32 * 1024 ** 2 } });

describe('resourceFieldRef', () => {
  it('reads the zero divisor the API server stores for an unset one as 1', () => {
    expect(resourceValue(sized, { containerName: '', resource: 'limits.cpu', divisor: '0' }, 'c')).toBe('2');
    expect(resourceValue(sized, { containerName: '', resource: 'requests.memory', divisor: '0' }, 'c')).toBe(String(32 * 1024 ** 2));
  });

  it('takes the divisors as the API server serializes them', () => {
    expect(resourceValue(sized, { containerName: '', resource: 'limits.memory', divisor: '1Mi' }, 'c')).toBe('64');
    expect(resourceValue(sized, { containerName: '', resource: 'requests.cpu', divisor: '1m' }, 'c')).toBe('250');
    expect(resourceValue(sized, { containerName: '', resource: 'limits.memory', divisor: 'Mi' }, 'c')).toBe('64');
  });

  it("defaults a limit that is not set to the node's allocatable, as the kubelet", () => {
    const unset = pod({});
    expect(resourceValue(unset, { containerName: '', resource: 'limits.cpu', divisor: '1' }, 'c')).toBe(String(cpus().length));
    expect(resourceValue(unset, { containerName: '', resource: 'limits.memory', divisor: '0' }, 'c')).toBe(String(totalmem()));
  });

  it('refuses a divisor the API does not allow, naming it', () => {
    expect(() => resourceValue(sized, { containerName: '', resource: 'limits.memory', divisor: '3Mi' }, 'c')).toThrow('unsupported divisor "3Mi"');
  });
});
