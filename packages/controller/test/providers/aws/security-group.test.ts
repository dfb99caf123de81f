// The managed cell security group against a real EC2 API emulator (moto server on loopback):
// the rules a start leaves, what a later start with another configuration revokes, and the
// groups and rules Cello must never change.
import {
  AuthorizeSecurityGroupIngressCommand,
  CreateSecurityGroupCommand,
  DescribeSecurityGroupsCommand,
  EC2Client,
  type IpPermission,
  type SecurityGroup,
} from '@aws-sdk/client-ec2';
import { startMoto, type MotoServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsProvider, parseAwsProviderConfig, type AwsProviderConfigInput } from '../../../src/providers/aws/index.js';
import { ensureCellSecurityGroup, rulesOf, type IngressRule } from '../../../src/providers/aws/security-group.js';
import { injectEc2Faults } from './fault-injection.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

let moto: MotoServer;
let world: MotoWorld;
let ec2: EC2Client;
const AGENT_PORT = 9443;
const CTL = 'ctl-sg';

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  ec2 = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
}, 60_000);

afterAll(async () => {
  ec2?.destroy();
  await moto?.stop();
});

let seq = 0;
function groupConfig(over: Partial<NonNullable<AwsProviderConfigInput['cellSecurityGroup']>> = {}) {
  return world.config({ cellSecurityGroup: { vpcId: world.vpcId, name: `cells-${++seq}`, allowFromSecurityGroups: [world.controllerSg], ...over } }).cellSecurityGroup!;
}

async function group(id: string): Promise<SecurityGroup> {
  const r = await ec2.send(new DescribeSecurityGroupsCommand({ GroupIds: [id] }));
  return r.SecurityGroups![0]!;
}

const show = (r: IngressRule) => `${r.protocol} ${r.fromPort ?? ''}-${r.toPort ?? ''} from ${'groupId' in r.source ? r.source.groupId : r.source.cidr} "${r.description}"`;
const rules = async (id: string) =>
  rulesOf(await group(id))
    .map(show)
    .sort();

/** The pod-traffic rules from one source: every port but the agent's. */
const podRules = (from: string, description: string, icmp = 'icmp') => [
  `tcp 0-${AGENT_PORT - 1} from ${from} "${description}"`,
  `tcp ${AGENT_PORT + 1}-65535 from ${from} "${description}"`,
  `udp 0-65535 from ${from} "${description}"`,
  `${icmp} -1--1 from ${from} "${description}"`,
  `132 - from ${from} "${description}"`,
];
const agentRule = (from: string) => `tcp ${AGENT_PORT}-${AGENT_PORT} from ${from} "cello: agent port, from the controller"`;
const CELLS = 'cello: pod traffic between cells';
const CLUSTER = 'cello: pod traffic from a cluster CIDR';

function normalizePortless(xs: string[]): string[] {
  // A protocol without ports (SCTP) shows no range, whatever the emulator echoes back.
  return xs.map((x) => x.replace(/^132 [-\d]*-[-\d]* from/, '132 - from')).sort();
}

describe('the managed cell security group', () => {
  it('after start admits the agent port from the controller only, and pod traffic on every other port from the cells and the cluster CIDRs', async () => {
    const cfg = groupConfig({ clusterCidrs: ['10.30.0.0/16', 'fd00:30::/64'] });
    const id = await ensureCellSecurityGroup(ec2, cfg, AGENT_PORT, CTL);
    expect(normalizePortless(await rules(id))).toEqual(
      normalizePortless([agentRule(world.controllerSg), ...podRules(id, CELLS), ...podRules('10.30.0.0/16', CLUSTER), ...podRules('fd00:30::/64', CLUSTER, '58')]),
    );
    // Least privilege: nothing but the controller's group reaches the agent port, and no
    // rule is open to the internet.
    const all = rulesOf(await group(id));
    const reachesAgent = (r: IngressRule) => (r.protocol === 'tcp' || r.protocol === '-1') && (r.fromPort ?? 0) <= AGENT_PORT && (r.toPort ?? 65535) >= AGENT_PORT;
    expect(all.filter(reachesAgent).map((r) => r.source)).toEqual([{ groupId: world.controllerSg }]);
    expect(all.filter((r) => 'cidr' in r.source && r.source.cidr.endsWith('/0'))).toEqual([]);
    const tags = Object.fromEntries(((await group(id)).Tags ?? []).map((t) => [t.Key, t.Value]));
    expect(tags).toMatchObject({ 'cello.io/controller-id': CTL });

    // A second start with the same configuration changes nothing (and does not fail).
    const before = await rules(id);
    expect(await ensureCellSecurityGroup(ec2, cfg, AGENT_PORT, CTL)).toBe(id);
    expect(await rules(id)).toEqual(before);
  });

  it('revokes at the next start what is no longer configured, and leaves rules added by hand alone', async () => {
    const name = `cells-revoke-${++seq}`;
    const first = groupConfig({ name, clusterCidrs: ['10.31.0.0/16', '10.32.0.0/16'], allowFromCidrs: ['10.20.9.0/24'] });
    const id = await ensureCellSecurityGroup(ec2, first, AGENT_PORT, CTL);
    // An operator's own rule in the managed group, and one on a port Cello also opens.
    const byHand: IpPermission[] = [
      { IpProtocol: 'tcp', FromPort: 22, ToPort: 22, IpRanges: [{ CidrIp: '10.99.0.0/24', Description: 'ssh from the bastion' }] },
      { IpProtocol: 'udp', FromPort: 0, ToPort: 65535, IpRanges: [{ CidrIp: '10.98.0.0/24' }] },
    ];
    await ec2.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: id, IpPermissions: byHand }));

    // Next start: one cluster CIDR gone, pod traffic between cells off, the agent CIDR gone.
    const second = groupConfig({ name, clusterCidrs: ['10.31.0.0/16'], allowBetweenCells: false });
    expect(await ensureCellSecurityGroup(ec2, second, AGENT_PORT, CTL)).toBe(id);
    expect(normalizePortless(await rules(id))).toEqual(
      normalizePortless([
        agentRule(world.controllerSg),
        ...podRules('10.31.0.0/16', CLUSTER),
        'tcp 22-22 from 10.99.0.0/24 "ssh from the bastion"',
        'udp 0-65535 from 10.98.0.0/24 ""',
      ]),
    );

    // A changed agent port moves the agent rule; the old port is no longer open.
    await ensureCellSecurityGroup(ec2, second, 10250, CTL);
    const now = await rules(id);
    expect(now).toContain(`tcp 10250-10250 from ${world.controllerSg} "cello: agent port, from the controller"`);
    expect(now.filter((r) => r.startsWith(`tcp ${AGENT_PORT}-${AGENT_PORT}`))).toEqual([]);
  });

  it('still adds every rule when another replica added one of them since the describe', async () => {
    const cfg = groupConfig({ clusterCidrs: ['10.34.0.0/16'] });
    const id = await ensureCellSecurityGroup(ec2, { ...cfg, allowBetweenCells: false, clusterCidrs: [] }, AGENT_PORT, CTL);
    // A second client whose first authorize is preceded by the other replica's.
    const racing = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
    let raced = false;
    racing.middlewareStack.add(
      (next, context) => async (args) => {
        if (!raced && (context as { commandName?: string }).commandName === 'AuthorizeSecurityGroupIngressCommand') {
          raced = true;
          const udp = { IpProtocol: 'udp', FromPort: 0, ToPort: 65535 };
          await ec2.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: id, IpPermissions: [{ ...udp, IpRanges: [{ CidrIp: '10.34.0.0/16', Description: CLUSTER }] }] }));
        }
        return next(args);
      },
      { step: 'initialize' },
    );
    try {
      await ensureCellSecurityGroup(racing, cfg, AGENT_PORT, CTL);
    } finally {
      racing.destroy();
    }
    expect(raced).toBe(true);
    expect(normalizePortless(await rules(id))).toEqual(normalizePortless([agentRule(world.controllerSg), ...podRules(id, CELLS), ...podRules('10.34.0.0/16', CLUSTER)]));
  });

  it('fails closed, naming the rules, when a rule no longer configured cannot be revoked', async () => {
    const name = `cells-norevoke-${++seq}`;
    const id = await ensureCellSecurityGroup(ec2, groupConfig({ name, clusterCidrs: ['10.35.0.0/16'] }), AGENT_PORT, CTL);
    const denied = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials, maxAttempts: 1 });
    injectEc2Faults(denied, [{ command: 'RevokeSecurityGroupIngress', code: 'UnauthorizedOperation', message: 'You are not authorized to perform this operation.', status: 403 }]);
    try {
      await expect(ensureCellSecurityGroup(denied, groupConfig({ name }), AGENT_PORT, CTL)).rejects.toThrow(
        new RegExp(`cannot revoke the rules no longer configured in the cell security group ${id} \\(tcp 0-9442 from 10\\.35\\.0\\.0/16;.*needs ec2:RevokeSecurityGroupIngress`),
      );
    } finally {
      denied.destroy();
    }
    expect((await rules(id)).filter((r) => r.includes('10.35.0.0/16'))).toHaveLength(5);
  });

  it('never touches a group Cello did not create: refused by name, its rules unchanged', async () => {
    const name = `someone-elses-${++seq}`;
    const theirs = await ec2.send(new CreateSecurityGroupCommand({ GroupName: name, Description: 'not Cello', VpcId: world.vpcId }));
    await ec2.send(
      new AuthorizeSecurityGroupIngressCommand({
        GroupId: theirs.GroupId!,
        IpPermissions: [{ IpProtocol: 'tcp', FromPort: 443, ToPort: 443, IpRanges: [{ CidrIp: '0.0.0.0/0', Description: 'cello: looks like ours' }] }],
      }),
    );
    const before = await rules(theirs.GroupId!);
    await expect(ensureCellSecurityGroup(ec2, groupConfig({ name, clusterCidrs: ['10.33.0.0/16'] }), AGENT_PORT, CTL)).rejects.toThrow(
      new RegExp(`providers\\.aws\\.cellSecurityGroup\\.name: security group ${name} \\(${theirs.GroupId}\\) in ${world.vpcId} was not created by Cello`),
    );
    expect(await rules(theirs.GroupId!)).toEqual(before);
  });

  it("changes neither the controller's group nor the extra groups cells join, through launches and revocations", async () => {
    const extra = await ec2.send(new CreateSecurityGroupCommand({ GroupName: `extra-${++seq}`, Description: 'extra', VpcId: world.vpcId }));
    await ec2.send(
      new AuthorizeSecurityGroupIngressCommand({
        GroupId: extra.GroupId!,
        IpPermissions: [{ IpProtocol: 'tcp', FromPort: 80, ToPort: 80, IpRanges: [{ CidrIp: '10.40.0.0/16' }] }],
      }),
    );
    const untouched = [world.controllerSg, extra.GroupId!];
    const before = await Promise.all(untouched.map((g) => group(g)));
    const name = `cells-launch-${seq}`;
    const launchWith = async (clusterCidrs: string[]) => {
      const p = new AwsProvider({
        config: world.config({ securityGroupIds: [extra.GroupId!], cellSecurityGroup: { vpcId: world.vpcId, name, allowFromSecurityGroups: [world.controllerSg], clusterCidrs } }),
        controllerId: CTL,
        clientConfig: { credentials: moto.credentials },
        logger: pino({ level: 'silent' }),
      });
      try {
        const cellId = `cell-sg-${process.pid}-${++seq}`;
        const l = await p.launch({
          cellId,
          instanceType: 't3.small',
          spot: false,
          tags: {},
          bootstrap: {
            caCertPem: '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n',
            token: `cbt_${cellId}`,
            tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
            controllerId: CTL,
            cellId,
            agentPort: AGENT_PORT,
          },
        });
        await p.terminate([l.instanceId]);
      } finally {
        await p.close();
      }
    };
    const managedRules = async () => {
      const r = await ec2.send(new DescribeSecurityGroupsCommand({ Filters: [{ Name: 'group-name', Values: [name] }] }));
      return rulesOf(r.SecurityGroups![0]!).map(show);
    };
    await launchWith(['10.41.0.0/16']);
    expect((await managedRules()).filter((r) => r.includes('10.41.0.0/16'))).toHaveLength(5);
    await launchWith([]);
    expect((await managedRules()).filter((r) => r.includes('10.41.0.0/16'))).toEqual([]);
    const after = await Promise.all(untouched.map((g) => group(g)));
    expect(after.map((g) => g.IpPermissions)).toEqual(before.map((g) => g.IpPermissions));
  });
});

describe('configuration of the pod-traffic rules', () => {
  const base = { image: { id: 'ami-0abc' }, subnets: ['subnet-0abc'] };
  const sg = (over: Record<string, unknown>) => ({ ...base, cellSecurityGroup: { vpcId: 'vpc-0abc', allowFromSecurityGroups: ['sg-0abc'], ...over } });

  it('defaults to pod traffic between cells and no cluster CIDRs', () => {
    expect(parseAwsProviderConfig(sg({})).cellSecurityGroup).toMatchObject({ allowBetweenCells: true, clusterCidrs: [] });
  });

  it('refuses what is not a canonical CIDR, the whole internet, and unknown fields, naming the field', () => {
    expect(() => parseAwsProviderConfig(sg({ clusterCidrs: ['10.0.0.0/16', '10.1.2.3/16'] }))).toThrow(
      /providers\.aws\.cellSecurityGroup\.clusterCidrs\.1: 10\.1\.2\.3\/16 has host bits set: did you mean 10\.1\.0\.0\/16\?/,
    );
    expect(() => parseAwsProviderConfig(sg({ clusterCidrs: ['0.0.0.0/0'] }))).toThrow(/clusterCidrs\.0: 0\.0\.0\.0\/0 would admit every address to every pod port/);
    expect(() => parseAwsProviderConfig(sg({ clusterCidrs: ['10.0.0.0/33'] }))).toThrow(/clusterCidrs\.0: "10\.0\.0\.0\/33" is not a CIDR/);
    expect(() => parseAwsProviderConfig(sg({ clusterCidrs: ['pods'] }))).toThrow(/clusterCidrs\.0: "pods" is not a CIDR/);
    expect(() => parseAwsProviderConfig(sg({ clusterCIDRs: ['10.0.0.0/16'] }))).toThrow(/providers\.aws\.cellSecurityGroup: Unrecognized key.*clusterCIDRs/);
    expect(() => parseAwsProviderConfig(sg({ allowBetweenCells: 'yes' }))).toThrow(/providers\.aws\.cellSecurityGroup\.allowBetweenCells:/);
  });
});
