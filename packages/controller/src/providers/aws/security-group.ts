// The cell security group: admits the agent port only from the controller's security group(s)
// and/or configured CIDRs, and nothing else inbound. Created once per VPC by name, found again
// by name after a restart, and tagged with the controller ID that created it.
import { AuthorizeSecurityGroupIngressCommand, CreateSecurityGroupCommand, DescribeSecurityGroupsCommand, type EC2Client, type IpPermission } from '@aws-sdk/client-ec2';
import { errorCode } from './capacity.js';
import { TAGS, type AwsProviderConfig } from './config.js';

type SgConfig = NonNullable<AwsProviderConfig['cellSecurityGroup']>;

export async function ensureCellSecurityGroup(ec2: EC2Client, cfg: SgConfig, agentPort: number, controllerId: string): Promise<string> {
  const found = await ec2.send(
    new DescribeSecurityGroupsCommand({
      Filters: [
        { Name: 'group-name', Values: [cfg.name] },
        { Name: 'vpc-id', Values: [cfg.vpcId] },
      ],
    }),
  );
  let group = found.SecurityGroups?.[0];
  let groupId = group?.GroupId;
  if (!groupId) {
    try {
      const created = await ec2.send(
        new CreateSecurityGroupCommand({
          GroupName: cfg.name,
          VpcId: cfg.vpcId,
          Description: 'Cello cells: the agent port from the controller only',
          TagSpecifications: [{ ResourceType: 'security-group', Tags: [{ Key: TAGS.controllerId, Value: controllerId }] }],
        }),
      );
      groupId = created.GroupId!;
    } catch (err) {
      // Another controller replica created it between our describe and create.
      if (errorCode(err) !== 'InvalidGroup.Duplicate') throw err;
      const again = await ec2.send(
        new DescribeSecurityGroupsCommand({
          Filters: [
            { Name: 'group-name', Values: [cfg.name] },
            { Name: 'vpc-id', Values: [cfg.vpcId] },
          ],
        }),
      );
      group = again.SecurityGroups?.[0];
      groupId = group?.GroupId;
      if (!groupId) throw err;
    }
  }
  const have = group?.IpPermissions ?? [];
  const hasSg = (sg: string) => have.some((p) => p.FromPort === agentPort && p.ToPort === agentPort && p.UserIdGroupPairs?.some((u) => u.GroupId === sg));
  const hasCidr = (c: string) =>
    have.some((p) => p.FromPort === agentPort && p.ToPort === agentPort && (p.IpRanges?.some((r) => r.CidrIp === c) || p.Ipv6Ranges?.some((r) => r.CidrIpv6 === c)));
  const want: IpPermission[] = [];
  for (const sg of cfg.allowFromSecurityGroups) {
    if (!hasSg(sg)) {
      want.push({ IpProtocol: 'tcp', FromPort: agentPort, ToPort: agentPort, UserIdGroupPairs: [{ GroupId: sg, Description: 'controller' }] });
    }
  }
  for (const c of cfg.allowFromCidrs) {
    if (hasCidr(c)) continue;
    const range = c.includes(':') ? { Ipv6Ranges: [{ CidrIpv6: c, Description: 'controller' }] } : { IpRanges: [{ CidrIp: c, Description: 'controller' }] };
    want.push({ IpProtocol: 'tcp', FromPort: agentPort, ToPort: agentPort, ...range });
  }
  if (want.length > 0) {
    try {
      await ec2.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: groupId, IpPermissions: want }));
    } catch (err) {
      if (errorCode(err) !== 'InvalidPermission.Duplicate') throw err;
    }
  }
  return groupId;
}
