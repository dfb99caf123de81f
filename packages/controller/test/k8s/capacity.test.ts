// Node capacity from the provider's real limits: the arithmetic (the scheduler's own
// subtraction of bound pods' requests must land on the provider's real headroom), the local
// provider against this host and its real cells, and the aws provider against moto (the
// account's max-instances and every running instance in it, ours or not).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { RunInstancesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { startMoto } from '@cello/testkit';
import { nodeCapacity, podsUsage } from '../../src/k8s/node/capacity.js';
import type { KPod } from '../../src/k8s/node/manifest.js';
import { LocalProvider } from '../../src/providers/local/local.js';
import { AwsProvider } from '../../src/providers/aws/index.js';
import type { InstanceType } from '../../src/providers/provider.js';
import { makeWorld } from '../providers/aws/moto-world.js';

const types: InstanceType[] = [
  { name: 'small', vcpus: 2, memoryMiB: 2048, gpus: 0, onDemandHourlyUsd: 1, arch: 'amd64' },
  { name: 'big', vcpus: 8, memoryMiB: 32768, gpus: 0, onDemandHourlyUsd: 4, arch: 'amd64' },
];

const kpod = (name: string, requests: Record<string, string>, phase = 'Running'): KPod => ({
  metadata: { name, namespace: 'default', uid: name },
  spec: { containers: [{ name: 'c', resources: { requests } }], initContainers: [{ name: 'i', resources: { requests: { cpu: '3' } } }] },
  status: { phase },
});

describe('node capacity from provider limits', () => {
  it('counts the requests of pods that hold a cell, with the init-container rule', () => {
    expect(podsUsage([kpod('a', { cpu: '500m', memory: '1Gi' }), kpod('b', { cpu: '250m' }), kpod('done', { cpu: '4' }, 'Succeeded')])).toEqual({
      pods: 2,
      cpuMillis: 3000 + 3000,
      memoryMiB: 1024,
    });
    expect(podsUsage([kpod('x', { cpu: '4', memory: '512Mi' })])).toEqual({ pods: 1, cpuMillis: 4000, memoryMiB: 512 });
  });

  it("allocatable = headroom + what the node's pods request, so the scheduler's free figure is the real headroom", () => {
    // 20 instances allowed, 5 in use (3 of them this node's pods, 2 someone else's).
    const onNode = { pods: 3, cpuMillis: 750, memoryMiB: 1536 };
    const r = nodeCapacity({ instances: { limit: 20, used: 5 }, source: 'test' }, types, onNode);
    expect(r.capacity).toEqual({ cpu: '160', memory: `${20 * 32768}Mi`, pods: '20' });
    expect(r.allocatable.pods).toBe('18'); // 15 free + 3 bound: the scheduler sees 15 free
    expect(r.allocatable.cpu).toBe(`${15 * 8 * 1000 + 750}m`);
    // A vCPU quota binds harder than the instance limit: 64 vCPUs, 60 used -> 2 smallest cells.
    const q = nodeCapacity({ instances: { limit: 20, used: 5 }, vcpus: { limit: 64, used: 60 }, source: 'test' }, types, onNode);
    expect(q.capacity.cpu).toBe('64');
    expect(q.allocatable).toMatchObject({ cpu: '4750m', pods: '5' });
    // Over the limit (someone else launched): nothing free, never negative.
    const full = nodeCapacity({ instances: { limit: 4, used: 9 }, source: 'test' }, types, { pods: 0, cpuMillis: 0, memoryMiB: 0 });
    expect(full.allocatable).toMatchObject({ pods: '0', cpu: '0', memory: '0Mi' });
  });
});

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('provider capacity()', () => {
  it("local: the host's memory and cores, real memory in use, and live cells against maxCells", async () => {
    const root = mkdtempSync(join(tmpdir(), 'cello-capacity-'));
    dirs.push(root);
    const p = new LocalProvider({ root, maxCells: 3, network: 'host' });
    const before = await p.capacity();
    expect(before.instances).toEqual({ limit: 3, used: 0 });
    expect(before.memoryMiB!.limit).toBe(Math.floor(totalmem() / 2 ** 20));
    const avail = Number(/^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) / 1024;
    expect(Math.abs(before.memoryMiB!.limit - before.memoryMiB!.used - avail)).toBeLessThan(256); // it moves a little between reads
    expect(before.sharedCpus).toBeGreaterThanOrEqual(1);
    expect(before.vcpus).toBeUndefined();
    const cellId = 'cell-capacity01';
    const inst = await p.launch({
      cellId,
      instanceType: 'local.nano',
      spot: false,
      tags: { 'cello.io/controller-id': 'cap', 'cello.io/cell-id': cellId },
      bootstrap: { caCertPem: '', token: 't', tokenExpiresAt: new Date().toISOString(), controllerId: 'cap', cellId, agentPort: 0 },
    });
    try {
      expect((await p.capacity()).instances).toEqual({ limit: 3, used: 1 });
      const node = nodeCapacity(await p.capacity(), await p.instanceTypes(), { pods: 0, cpuMillis: 0, memoryMiB: 0 });
      expect(node.allocatable.pods).toBe('2');
      // The host's cores are shared and compressible: all allocatable, whatever runs.
      expect(node.allocatable.cpu).toBe(node.capacity.cpu);
    } finally {
      await p.terminate([inst.instanceId]);
    }
    expect((await p.capacity()).instances.used).toBe(0);
  }, 60_000);

  it('aws (moto): max-instances from DescribeAccountAttributes, and every running instance of the account counts', async () => {
    const moto = await startMoto();
    try {
      const world = await makeWorld(moto);
      const p = new AwsProvider({
        config: world.config({ instanceTypes: ['t3.*'] }),
        controllerId: 'capacity-aws',
        clientConfig: { credentials: moto.credentials },
        logger: pino({ level: 'silent' }),
      });
      try {
        const before = await p.capacity();
        expect(before.instances.limit).toBe(20); // moto's account attribute
        expect(before.source).toBe('ec2:DescribeAccountAttributes');
        // Two instances someone else launched in the account count against the limit too.
        const ec2 = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
        await ec2.send(new RunInstancesCommand({ ImageId: world.imageId, InstanceType: 't3.micro', MinCount: 2, MaxCount: 2 }));
        ec2.destroy();
        const after = await p.capacity();
        expect(after.instances.used).toBe(before.instances.used + 2);
        const node = nodeCapacity(after, await p.instanceTypes(), { pods: 0, cpuMillis: 0, memoryMiB: 0 });
        expect(node.capacity.pods).toBe('20');
        expect(node.allocatable.pods).toBe(String(20 - after.instances.used));
      } finally {
        await p.close();
      }
    } finally {
      await moto.stop();
    }
  }, 60_000);
});
