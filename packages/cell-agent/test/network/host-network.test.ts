// hostNetwork, hostPID/hostIPC and hostPort on a cell, with real runc and the real kernel: an
// agent whose pod namespace is testkit's network lab "cell" (as a local cell's is), a pod from a
// real registry, and connections from the lab's other namespace to the cell's address.
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireCommand, startNetLab, waitFor, type NetLab } from '@cello/testkit';
import { Protocol } from '@cello/proto/cell';
import { apply, pod, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { startTestRegistry, type TestImages } from '../helpers/registry.js';
import { requireTools } from '../helpers/rootfs.js';
import { HOSTPORTS_TABLE } from '../../src/network/hostports.js';

const SUBNET = '10.203.0';
let lab: NetLab;
let reg: TestImages;
const agents: TestAgent[] = [];
const clusterDns = { nameservers: ['10.96.0.10'], domain: 'cluster.local' };

beforeAll(async () => {
  requireTools();
  requireCommand('nft', 'nftables');
  reg = await startTestRegistry();
  lab = await startNetLab(`hn${process.pid % 10000}`, SUBNET);
}, 60_000);

afterAll(async () => {
  for (const a of agents) await a.stop();
  await lab?.stop();
  await reg?.stop();
});

async function cellAgent(): Promise<TestAgent> {
  const a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podNetns: `/run/netns/${lab.cell}`, podIP: lab.cellAddress });
  agents.push(a);
  return a;
}

const sh = (script: string) => ['sh', '-c', script];
const out = { name: 'out', source: { $case: 'emptyDir', value: {} } };
const outMount = [{ name: 'out', mountPath: '/out' }];

/** Runs `script` in a pod with `spec` on a fresh cell; returns the files it wrote under /out. */
async function run(spec: Record<string, unknown>, script: string, files: string[]): Promise<{ a: TestAgent; read: (f: string) => string }> {
  const a = await cellAgent();
  await apply(a.client, {
    pod: pod('net', { ...spec, volumes: [out], containers: [{ name: 'main', image: reg.busybox, command: sh(`${script}; touch /out/done; sleep 3600`), volumeMounts: outMount }] }),
    clusterDns,
  });
  const read = (f: string) => readFileSync(join(a.stateDir, 'volumes/out', f), 'utf8');
  await waitFor(
    'the pod to write its files',
    () => {
      try {
        read('done');
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 60_000, intervalMs: 200 },
  );
  for (const f of files) read(f);
  return { a, read };
}

const refusal = (a: TestAgent, spec: Record<string, unknown>) =>
  apply(a.client, { pod: pod('bad', spec) }).then(
    () => undefined,
    (err: ServiceError) => err,
  );

describe('hostNetwork on a cell', () => {
  it("runs the pod in the cell's network namespace with the cell's address, hostname and hosts; ClusterFirst means the cell's resolver", async () => {
    const { a, read } = await run(
      { hostNetwork: true, dnsPolicy: 'ClusterFirst', hostAliases: [{ ip: '10.1.2.3', hostnames: ['alias.example'] }] },
      'readlink /proc/self/ns/net > /out/netns; ip -4 -o addr > /out/addrs; hostname > /out/hostname; cat /etc/resolv.conf > /out/resolv; cat /etc/hosts > /out/hosts',
      ['netns'],
    );
    expect(read('netns').trim()).toBe(`net:[${statSync(`/run/netns/${lab.cell}`).ino}]`);
    expect(read('addrs')).toContain(`inet ${lab.cellAddress}/24`);
    expect(a.watch.last?.status?.podIp).toBe(lab.cellAddress);
    expect(read('hostname').trim()).toBe(hostname());
    // The kubelet's rule: ClusterFirst on the host's network is the host's resolver.
    expect(read('resolv')).not.toContain('10.96.0.10');
    expect(read('resolv')).not.toContain('ndots:5');
    // The cell's own hosts file, then the pod's aliases.
    const hosts = read('hosts');
    for (const line of readFileSync('/etc/hosts', 'utf8').trim().split('\n')) expect(hosts).toContain(line);
    expect(hosts).toContain('10.1.2.3\talias.example');
  });

  it('ClusterFirstWithHostNet gives it the cluster DNS', async () => {
    const { read } = await run({ hostNetwork: true, dnsPolicy: 'ClusterFirstWithHostNet' }, 'cat /etc/resolv.conf > /out/resolv', ['resolv']);
    expect(read('resolv')).toMatch(/^nameserver 10\.96\.0\.10\nsearch default\.svc\.cluster\.local svc\.cluster\.local cluster\.local/);
    expect(read('resolv')).toContain('options ndots:5');
  });

  it('hostPID and hostIPC are refused naming the field; so is a hostNetwork hostPort that is not its containerPort', async () => {
    const a = await cellAgent();
    const container = { name: 'main', image: reg.busybox };
    for (const [field, spec] of [
      ['spec.hostPID', { hostPid: true, containers: [container] }],
      ['spec.hostIPC', { hostIpc: true, containers: [container] }],
      ['spec.containers[0].ports[0].hostPort', { hostNetwork: true, containers: [{ ...container, ports: [{ containerPort: 80, hostPort: 8080 }] }] }],
    ] as const) {
      const err = await refusal(a, spec);
      expect(err?.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(err?.details).toContain(`${field}:`);
    }
    expect(a.watch.last?.status?.containerStatuses ?? []).toEqual([]);
  });
});

describe('hostPort on a cell', () => {
  it("serves the cell's address:hostPort from the pod's containerPort over a real TCP connection, per protocol; the rules go with the pod", async () => {
    const a = await cellAgent();
    const nftTable = () => lab.exec(lab.cell, 'nft', 'list', 'table', ...HOSTPORTS_TABLE.split(' '));
    await apply(a.client, {
      pod: pod('web', {
        containers: [
          {
            name: 'web',
            image: reg.busybox,
            command: sh('exec nc -ll -p 8080 -e echo tcp-from-pod'),
            ports: [
              { containerPort: 8080, hostPort: 18080, protocol: Protocol.PROTOCOL_TCP },
              // The same number for UDP is another claim, to another port.
              { containerPort: 5353, hostPort: 18080, protocol: Protocol.PROTOCOL_UDP },
            ],
          },
        ],
      }),
    });
    let last: string[] = [];
    await waitFor(
      'the hostPort to answer from the other namespace',
      () => {
        last = lab.connect(lab.backends, 'tcp', lab.cellAddress, 18080, 1, 1000);
        return last[0] === 'tcp-from-pod\n';
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last answer ${JSON.stringify(last)}`);
    });
    // From the cell itself too (the output hook), and nothing on a port the pod did not claim.
    expect(lab.connect(lab.cell, 'tcp', lab.cellAddress, 18080, 1, 1000)).toEqual(['tcp-from-pod\n']);
    expect(lab.connect(lab.backends, 'tcp', lab.cellAddress, 18081, 1, 1000)).toEqual(['ERR:ECONNREFUSED']);
    const table = nftTable();
    expect(table).toMatch(new RegExp(`tcp dport 18080 dnat to ${lab.cellAddress.replace(/\./g, '\\.')}:8080`));
    expect(table).toMatch(new RegExp(`udp dport 18080 dnat to ${lab.cellAddress.replace(/\./g, '\\.')}:5353`));

    // Two containers claiming one hostPort and protocol: refused, naming both.
    const err = await refusal(a, {
      containers: [
        { name: 'one', image: reg.busybox, ports: [{ containerPort: 80, hostPort: 9000 }] },
        { name: 'two', image: reg.busybox, ports: [{ containerPort: 81, hostPort: 9000 }] },
      ],
    });
    expect(err?.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(err?.details).toBe('spec.containers[1].ports[0].hostPort: TCP/9000 is already claimed by spec.containers[0].ports[0].hostPort');

    await new Promise<void>((resolve, reject) => a.client.deletePod({ gracePeriodSeconds: 0 }, (e) => (e ? reject(e) : resolve())));
    expect(() => nftTable()).toThrow();
    expect(lab.connect(lab.backends, 'tcp', lab.cellAddress, 18080, 1, 1000)).toEqual(['ERR:ECONNREFUSED']);
  });
});
