// The cell security group, the one group Cello manages: created once per VPC by name (tagged
// with the controller ID that created it), found again by name after a restart, and reconciled
// at each start to exactly the rules the configuration asks for. Inbound it admits:
//   - the agent port, only from the controller's security group(s) and/or configured CIDRs;
//   - pod traffic (every protocol and port but the agent port) from the other cells (a rule
//     naming the group itself) and from the configured cluster CIDRs.
// The rules Cello adds carry a `cello:` description; at start those no longer configured are
// revoked. Rules without it (added by hand) are left alone, and no other group is ever changed:
// a group with the configured name that Cello did not create is refused, not adopted.
import {
  AuthorizeSecurityGroupIngressCommand,
  CreateSecurityGroupCommand,
  DescribeSecurityGroupsCommand,
  RevokeSecurityGroupIngressCommand,
  type EC2Client,
  type IpPermission,
  type SecurityGroup,
} from '@aws-sdk/client-ec2';
import { CelloError } from '@cello/proto';
import { errorCode } from './capacity.js';
import { TAGS, type AwsProviderConfig } from './config.js';

type SgConfig = NonNullable<AwsProviderConfig['cellSecurityGroup']>;

/** One inbound rule: a protocol and port range from one source, as EC2 stores it. */
export interface IngressRule {
  /** `tcp`, `udp`, `icmp`, or a protocol number (`58` ICMPv6, `132` SCTP). */
  protocol: string;
  /** -1 for all (ICMP types), undefined where the protocol has no ports. */
  fromPort?: number;
  toPort?: number;
  source: { groupId: string } | { cidr: string };
  description: string;
}

/** The description prefix that marks a rule as Cello's (and so Cello's to revoke). */
export const RULE_MARK = 'cello:';
const DESCRIPTIONS = {
  agent: `${RULE_MARK} agent port, from the controller`,
  cells: `${RULE_MARK} pod traffic between cells`,
  cluster: `${RULE_MARK} pod traffic from a cluster CIDR`,
} as const;
// What controllers before the `cello:` mark wrote on the agent-port rules.
const LEGACY_AGENT_DESCRIPTION = 'controller';

export async function ensureCellSecurityGroup(ec2: EC2Client, cfg: SgConfig, agentPort: number, controllerId: string): Promise<string> {
  const group = (await findGroup(ec2, cfg)) ?? (await createGroup(ec2, cfg, controllerId));
  const groupId = group.GroupId!;
  if (!group.Tags?.some((t) => t.Key === TAGS.controllerId)) {
    throw new CelloError(
      'FailedPrecondition',
      `providers.aws.cellSecurityGroup.name: security group ${cfg.name} (${groupId}) in ${cfg.vpcId} was not created by Cello ` +
        `(it has no ${TAGS.controllerId} tag), and Cello changes the rules only of a group it manages: choose another name, ` +
        `or tag the group ${TAGS.controllerId}=${controllerId} to hand it over`,
    );
  }
  const want = desiredRules(cfg, agentPort, groupId);
  const have = rulesOf(group);
  const wanted = new Set(want.map(ruleKey));
  const present = new Set(have.map(ruleKey));
  const missing = want.filter((r) => !present.has(ruleKey(r)));
  const stale = have.filter((r) => isCellos(r) && !wanted.has(ruleKey(r)));
  if (missing.length > 0) await authorize(ec2, groupId, missing);
  if (stale.length > 0) {
    try {
      await ec2.send(new RevokeSecurityGroupIngressCommand({ GroupId: groupId, IpPermissions: stale.map(toPermission) }));
    } catch (err) {
      if (errorCode(err) === 'InvalidPermission.NotFound') return groupId;
      // Failing closed: a range the operator removed must not stay open unnoticed.
      throw new CelloError(
        'FailedPrecondition',
        `cannot revoke the rules no longer configured in the cell security group ${groupId} (${stale.map(describeRule).join('; ')}): ` +
          `${(err as Error).message}; the controller needs ec2:RevokeSecurityGroupIngress on it (docs/aws.md)`,
        { cause: err },
      );
    }
  }
  return groupId;
}

// EC2 applies a batch all or nothing: when one rule of it exists already (another replica added
// it since our describe), each rule is added on its own so the others still are.
async function authorize(ec2: EC2Client, groupId: string, rules: IngressRule[]): Promise<void> {
  const send = (rs: IngressRule[]) => ec2.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: groupId, IpPermissions: rs.map(toPermission) }));
  try {
    await send(rules);
  } catch (err) {
    if (errorCode(err) !== 'InvalidPermission.Duplicate') throw err;
    for (const r of rules) {
      try {
        await send([r]);
      } catch (e) {
        if (errorCode(e) !== 'InvalidPermission.Duplicate') throw e;
      }
    }
  }
}

function describeRule(r: IngressRule): string {
  const ports = r.fromPort === undefined || r.fromPort === -1 ? '' : ` ${r.fromPort}-${r.toPort}`;
  return `${r.protocol}${ports} from ${'groupId' in r.source ? r.source.groupId : r.source.cidr}`;
}

/** Every rule the configuration asks for, in the group `groupId`. */
export function desiredRules(cfg: SgConfig, agentPort: number, groupId: string): IngressRule[] {
  const rules: IngressRule[] = [];
  const agent = (source: IngressRule['source']) => rules.push({ protocol: 'tcp', fromPort: agentPort, toPort: agentPort, source, description: DESCRIPTIONS.agent });
  for (const sg of cfg.allowFromSecurityGroups) agent({ groupId: sg });
  for (const cidr of cfg.allowFromCidrs) agent({ cidr });
  if (cfg.allowBetweenCells) for (const p of podTraffic(agentPort, false)) rules.push({ ...p, source: { groupId }, description: DESCRIPTIONS.cells });
  for (const cidr of cfg.clusterCidrs) {
    for (const p of podTraffic(agentPort, isV6(cidr))) rules.push({ ...p, source: { cidr }, description: DESCRIPTIONS.cluster });
  }
  return rules;
}

/**
 * Pod traffic: every protocol a pod serves (TCP, UDP, SCTP, ICMP for ping and path MTU
 * discovery) on every port but the agent's. Security groups only allow, so the agent port is
 * left out by splitting TCP around it: a pod on another cell has no business with this cell's
 * agent, which answers the controller alone.
 */
function podTraffic(agentPort: number, v6: boolean): Omit<IngressRule, 'source' | 'description'>[] {
  const out: Omit<IngressRule, 'source' | 'description'>[] = [];
  if (agentPort > 0) out.push({ protocol: 'tcp', fromPort: 0, toPort: agentPort - 1 });
  if (agentPort < 65535) out.push({ protocol: 'tcp', fromPort: agentPort + 1, toPort: 65535 });
  out.push({ protocol: 'udp', fromPort: 0, toPort: 65535 });
  out.push({ protocol: v6 ? '58' : 'icmp', fromPort: -1, toPort: -1 });
  // Ports mean nothing to SCTP in a security group; -1 is what EC2 stores for "all".
  out.push({ protocol: '132', fromPort: -1, toPort: -1 });
  return out;
}

/** The group's inbound rules, one per source (EC2 groups the sources of one port range). */
export function rulesOf(group: SecurityGroup): IngressRule[] {
  const out: IngressRule[] = [];
  for (const p of group.IpPermissions ?? []) {
    const base = { protocol: protocolName(p.IpProtocol ?? ''), ...ports(p) };
    for (const g of p.UserIdGroupPairs ?? []) if (g.GroupId) out.push({ ...base, source: { groupId: g.GroupId }, description: g.Description ?? '' });
    for (const r of p.IpRanges ?? []) if (r.CidrIp) out.push({ ...base, source: { cidr: r.CidrIp }, description: r.Description ?? '' });
    for (const r of p.Ipv6Ranges ?? []) if (r.CidrIpv6) out.push({ ...base, source: { cidr: r.CidrIpv6 }, description: r.Description ?? '' });
  }
  return out;
}

function ports(p: IpPermission): Pick<IngressRule, 'fromPort' | 'toPort'> {
  return p.FromPort === undefined && p.ToPort === undefined ? {} : { fromPort: p.FromPort, toPort: p.ToPort };
}

// EC2 reports a protocol given by number under its name for these three.
function protocolName(p: string): string {
  return ({ '6': 'tcp', '17': 'udp', '1': 'icmp' } as Record<string, string>)[p] ?? p.toLowerCase();
}

function isCellos(r: IngressRule): boolean {
  return r.description.startsWith(RULE_MARK) || (r.description === LEGACY_AGENT_DESCRIPTION && r.protocol === 'tcp' && r.fromPort === r.toPort);
}

/** What makes two rules the same to EC2 (descriptions do not). */
function ruleKey(r: IngressRule): string {
  const src = 'groupId' in r.source ? `sg:${r.source.groupId}` : `cidr:${r.source.cidr.toLowerCase()}`;
  const portless = r.fromPort === undefined || (r.protocol !== 'tcp' && r.protocol !== 'udp' && r.protocol !== 'icmp' && r.protocol !== '58');
  return `${r.protocol}|${portless ? '' : `${r.fromPort}-${r.toPort}`}|${src}`;
}

function toPermission(r: IngressRule): IpPermission {
  const p: IpPermission = { IpProtocol: r.protocol, ...(r.fromPort === undefined ? {} : { FromPort: r.fromPort, ToPort: r.toPort }) };
  if ('groupId' in r.source) p.UserIdGroupPairs = [{ GroupId: r.source.groupId, Description: r.description }];
  else if (isV6(r.source.cidr)) p.Ipv6Ranges = [{ CidrIpv6: r.source.cidr, Description: r.description }];
  else p.IpRanges = [{ CidrIp: r.source.cidr, Description: r.description }];
  return p;
}

const isV6 = (cidr: string) => cidr.includes(':');

async function findGroup(ec2: EC2Client, cfg: SgConfig): Promise<SecurityGroup | undefined> {
  const found = await ec2.send(
    new DescribeSecurityGroupsCommand({
      Filters: [
        { Name: 'group-name', Values: [cfg.name] },
        { Name: 'vpc-id', Values: [cfg.vpcId] },
      ],
    }),
  );
  return found.SecurityGroups?.[0];
}

async function createGroup(ec2: EC2Client, cfg: SgConfig, controllerId: string): Promise<SecurityGroup> {
  const tags = [{ Key: TAGS.controllerId, Value: controllerId }];
  try {
    const created = await ec2.send(
      new CreateSecurityGroupCommand({
        GroupName: cfg.name,
        VpcId: cfg.vpcId,
        Description: 'Cello cells: the agent port from the controller, pod traffic between cells',
        TagSpecifications: [{ ResourceType: 'security-group', Tags: tags }],
      }),
    );
    return { GroupId: created.GroupId!, Tags: tags, IpPermissions: [] };
  } catch (err) {
    // Another controller replica created it between our describe and create.
    if (errorCode(err) !== 'InvalidGroup.Duplicate') throw err;
    const again = await findGroup(ec2, cfg);
    if (!again?.GroupId) throw err;
    return again;
  }
}
