// Preflight of the aws provider: every EC2 action the controller calls, asked with DryRun
// (EC2 answers DryRunOperation when the caller may, UnauthorizedOperation when not), and the
// things the configuration names (subnets, security groups, VPC, AMI, instance profile)
// looked up, so a broken account shows at start rather than pod by pod at launch.
import {
  AuthorizeSecurityGroupIngressCommand,
  CreateSecurityGroupCommand,
  CreateTagsCommand,
  DescribeAccountAttributesCommand,
  DescribeImagesCommand,
  DescribeInstanceAttributeCommand,
  DescribeInstancesCommand,
  DescribeInstanceTypesCommand,
  DescribeSecurityGroupsCommand,
  DescribeSubnetsCommand,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type EC2Client,
  type RunInstancesCommandInput,
  type RunInstancesCommandOutput,
} from '@aws-sdk/client-ec2';
import { errMsg } from '@cello/proto';
import { errorCode } from '../providers/aws/capacity.js';
import { TAGS, type AwsProviderConfig } from '../providers/aws/config.js';
import { ImageResolver, type ResolvedImage } from '../providers/aws/image.js';
import type { InstanceType } from '../providers/provider.js';
import { fail, ok, warn, type CheckResult } from './result.js';

/** Syntactically valid IDs of nothing: dry runs of calls that need a resource ask about these. */
const PLACEHOLDER_INSTANCE = 'i-0000000000000000f';
const PLACEHOLDER_GROUP = 'sg-0000000000000000f';
const DENIED = new Set(['UnauthorizedOperation', 'AccessDenied', 'AccessDeniedException', 'UnauthorizedAccess']);
const EC2_ARCH = { amd64: 'x86_64', arm64: 'arm64' } as const;

export interface AwsPreflightOptions {
  ec2: EC2Client;
  config: AwsProviderConfig;
  /** The catalog the provider offers selection (after instanceTypes filters). */
  instanceTypes: InstanceType[];
  controllerId: string;
}

const grant = (action: string) => `grant ${action} to the controller's IAM identity (docs/aws.md lists the policy)`;

/**
 * One call with DryRun. DryRunOperation: allowed. UnauthorizedOperation: the missing action is
 * named. `notFoundIsPlaceholder`: the call names a placeholder resource, and an endpoint that
 * looks the resource up before the permission proves nothing either way (a warning).
 */
async function dryRun(
  check: string,
  action: string,
  call: () => Promise<unknown>,
  o: { notFoundIsPlaceholder?: boolean; fixFor?: (code: string, msg: string) => string } = {},
): Promise<CheckResult> {
  try {
    await call();
    // A read-only call that ignores DryRun answered for real: that proves the permission too.
    return ok(check, 'allowed (answered without DryRun)');
  } catch (err) {
    const code = errorCode(err) ?? 'unknown';
    const msg = errMsg(err);
    if (code === 'DryRunOperation') return ok(check, 'allowed (DryRun)');
    if (DENIED.has(code)) return fail(check, `denied: ${msg}`, grant(action));
    if (o.notFoundIsPlaceholder && /NotFound|InvalidID|Malformed/.test(code)) {
      return warn(check, `${code}: the endpoint checked the placeholder resource before the permission`, `not proven; make sure ${action} is granted`);
    }
    return fail(check, `${code}: ${msg}`, o.fixFor?.(code, msg) ?? `see the error; ${action} must succeed with this configuration`);
  }
}

export async function awsPreflight(o: AwsPreflightOptions): Promise<CheckResult[]> {
  const { ec2, config: cfg } = o;
  const out: CheckResult[] = [];

  // The configured subnets, one by one so the missing one is named.
  const goodSubnets: string[] = [];
  for (const id of cfg.subnets) {
    try {
      const r = await ec2.send(new DescribeSubnetsCommand({ SubnetIds: [id] }));
      const s = r.Subnets?.[0];
      if (!s) throw Object.assign(new Error(`subnet ${id} not found`), { name: 'InvalidSubnetID.NotFound' });
      goodSubnets.push(id);
      out.push(ok(`subnet ${id}`, `exists (${s.AvailabilityZone ?? '?'}, ${s.VpcId ?? '?'})`));
    } catch (err) {
      out.push(
        notFoundOr(`subnet ${id}`, err, 'ec2:DescribeSubnets', `providers.aws.subnets: remove ${id} or name a subnet of this region${cfg.region ? ` (${cfg.region})` : ''}`),
      );
    }
  }

  const groups: string[] = [];
  for (const id of [...cfg.securityGroupIds, ...(cfg.cellSecurityGroup?.allowFromSecurityGroups ?? [])]) {
    try {
      const r = await ec2.send(new DescribeSecurityGroupsCommand({ GroupIds: [id] }));
      if (!r.SecurityGroups?.length) throw Object.assign(new Error(`security group ${id} not found`), { name: 'InvalidGroup.NotFound' });
      out.push(ok(`security group ${id}`, `exists (${r.SecurityGroups[0]!.GroupName ?? ''})`));
      if (cfg.securityGroupIds.includes(id)) groups.push(id);
    } catch (err) {
      const field = cfg.securityGroupIds.includes(id) ? 'providers.aws.securityGroupIds' : 'providers.aws.cellSecurityGroup.allowFromSecurityGroups';
      out.push(notFoundOr(`security group ${id}`, err, 'ec2:DescribeSecurityGroups', `${field}: remove ${id} or name a group of this region`));
    }
  }

  // The managed cell group: found by name (as the provider does), else creatable.
  const sg = cfg.cellSecurityGroup;
  let cellGroup: string | undefined;
  if (sg) {
    const check = `cell security group ${sg.name} (${sg.vpcId})`;
    try {
      const r = await ec2.send(
        new DescribeSecurityGroupsCommand({
          Filters: [
            { Name: 'group-name', Values: [sg.name] },
            { Name: 'vpc-id', Values: [sg.vpcId] },
          ],
        }),
      );
      cellGroup = r.SecurityGroups?.[0]?.GroupId;
      if (cellGroup) {
        out.push(ok(check, `exists (${cellGroup})`));
        groups.unshift(cellGroup);
      } else {
        out.push(
          await dryRun(`ec2:CreateSecurityGroup (${sg.vpcId})`, 'ec2:CreateSecurityGroup', () =>
            ec2.send(new CreateSecurityGroupCommand({ DryRun: true, GroupName: sg.name, VpcId: sg.vpcId, Description: 'Cello cells: the agent port from the controller only' })),
          ),
        );
      }
    } catch (err) {
      out.push(notFoundOr(check, err, 'ec2:DescribeSecurityGroups', 'providers.aws.cellSecurityGroup.vpcId: name a VPC of this region'));
    }
    out.push(
      await dryRun(
        'ec2:AuthorizeSecurityGroupIngress',
        'ec2:AuthorizeSecurityGroupIngress',
        () => ec2.send(new AuthorizeSecurityGroupIngressCommand({ DryRun: true, GroupId: cellGroup ?? PLACEHOLDER_GROUP, IpPermissions: [] })),
        { notFoundIsPlaceholder: !cellGroup },
      ),
    );
  }

  // The image, per architecture of the catalog: at least one must fit, else no cell can start.
  const archs = [...new Set(o.instanceTypes.map((t) => t.arch))].sort();
  const resolver = new ImageResolver(ec2, cfg.image, 0);
  const imageField = 'id' in cfg.image ? `providers.aws.image.id (${cfg.image.id})` : `providers.aws.image.name (${cfg.image.name})`;
  const images = new Map<InstanceType['arch'], ResolvedImage>();
  const misses: Array<{ arch: InstanceType['arch']; notFound: boolean; message: string }> = [];
  for (const arch of archs) {
    try {
      images.set(arch, await resolver.resolve(arch));
    } catch (err) {
      const code = errorCode(err) ?? '';
      const notFound = /NotFound/.test(code) || /not found|no available/.test(errMsg(err));
      misses.push({ arch, notFound, message: /NotFound/.test(code) ? `${code}: ${errMsg(err)}` : errMsg(err) });
    }
  }
  if (archs.length === 0) {
    out.push(fail('instance types', 'the catalog is empty', 'providers.aws.instanceTypes: name types this region offers'));
  } else if (images.size === 0) {
    const field = imageField.split(' ')[0]!;
    out.push(
      fail(
        `image ${imageField}`,
        misses.map((m) => `${m.arch}: ${m.message}`).join('; '),
        misses.every((m) => m.notFound)
          ? `${field}: name an image that exists in this region`
          : `use an image built for ${archs.map((a) => EC2_ARCH[a]).join(' or ')}, or providers.aws.instanceTypes of the image's architecture`,
      ),
    );
  } else {
    out.push(ok(`image ${imageField}`, [...images].map(([a, i]) => `${a}: ${i.imageId}`).join(', ')));
    for (const m of misses) {
      const n = o.instanceTypes.filter((t) => t.arch === m.arch).length;
      out.push(
        warn(
          `image for ${m.arch}`,
          `${n} ${m.arch} instance types have no image (${m.message})`,
          `those types are never chosen; narrow providers.aws.instanceTypes or publish a ${EC2_ARCH[m.arch]} image`,
        ),
      );
    }
  }

  // RunInstances as a launch would call it, in every configured subnet.
  const arch = [...images.keys()][0];
  const image = arch ? images.get(arch) : undefined;
  const type = arch ? [...o.instanceTypes].filter((t) => t.arch === arch).sort((a, b) => a.onDemandHourlyUsd - b.onDemandHourlyUsd)[0] : undefined;
  if (image && type) {
    for (const subnet of goodSubnets) {
      const input = runInput(cfg, o.controllerId, { subnet, imageId: image.imageId, rootDeviceName: image.rootDeviceName, instanceType: type.name, groups });
      out.push(
        await dryRun(
          `ec2:RunInstances (${subnet}, ${type.name}${cfg.instanceProfile ? `, profile ${cfg.instanceProfile}` : ''})`,
          cfg.instanceProfile ? 'ec2:RunInstances and iam:PassRole on the instance profile role' : 'ec2:RunInstances',
          async () => {
            const r: RunInstancesCommandOutput = await ec2.send(new RunInstancesCommand(input));
            // An endpoint that ignored DryRun launched for real: take it back at once.
            const ids = (r.Instances ?? []).flatMap((i) => (i.InstanceId ? [i.InstanceId] : []));
            if (ids.length) await ec2.send(new TerminateInstancesCommand({ InstanceIds: ids }));
          },
          { fixFor: (code, msg) => runInstancesFix(cfg, code, msg) },
        ),
      );
    }
  } else {
    out.push(fail('ec2:RunInstances', 'not tried: no usable subnet, image or instance type', 'fix the failures above first'));
  }

  // The rest of what the controller calls, permission only.
  const calls: Array<[string, () => Promise<unknown>, boolean]> = [
    ['ec2:CreateTags', () => ec2.send(new CreateTagsCommand({ DryRun: true, Resources: [PLACEHOLDER_INSTANCE], Tags: [{ Key: TAGS.controllerId, Value: o.controllerId }] })), true],
    ['ec2:TerminateInstances', () => ec2.send(new TerminateInstancesCommand({ DryRun: true, InstanceIds: [PLACEHOLDER_INSTANCE] })), true],
    ['ec2:DescribeInstances', () => ec2.send(new DescribeInstancesCommand({ DryRun: true, MaxResults: 5 })), false],
    ['ec2:DescribeInstanceAttribute', () => ec2.send(new DescribeInstanceAttributeCommand({ DryRun: true, InstanceId: PLACEHOLDER_INSTANCE, Attribute: 'userData' })), true],
    ['ec2:DescribeImages', () => ec2.send(new DescribeImagesCommand({ DryRun: true, Owners: ['self'] })), false],
    ['ec2:DescribeSubnets', () => ec2.send(new DescribeSubnetsCommand({ DryRun: true, SubnetIds: cfg.subnets.slice(0, 1) })), false],
    ['ec2:DescribeSecurityGroups', () => ec2.send(new DescribeSecurityGroupsCommand({ DryRun: true, MaxResults: 5 })), false],
    ['ec2:DescribeAccountAttributes', () => ec2.send(new DescribeAccountAttributesCommand({ DryRun: true })), false],
  ];
  if (cfg.liveCatalog) calls.push(['ec2:DescribeInstanceTypes', () => ec2.send(new DescribeInstanceTypesCommand({ DryRun: true, MaxResults: 5 })), false]);
  for (const [action, call, placeholder] of calls) out.push(await dryRun(action, action, call, { notFoundIsPlaceholder: placeholder }));
  return out;
}

function notFoundOr(check: string, err: unknown, action: string, fix: string): CheckResult {
  const code = errorCode(err) ?? 'unknown';
  if (DENIED.has(code)) return fail(check, `denied: ${errMsg(err)}`, grant(action));
  if (/NotFound/.test(code)) return fail(check, 'not found', fix);
  return fail(check, `${code}: ${errMsg(err)}`, fix);
}

function runInstancesFix(cfg: AwsProviderConfig, code: string, msg: string): string {
  if (code === 'NoSuchEntity' || /instance profile|iamInstanceProfile/i.test(msg)) {
    return `providers.aws.instanceProfile: ${cfg.instanceProfile ?? '(none)'} must be an existing instance profile (name or ARN), and the controller needs iam:PassRole on its role`;
  }
  if (/Subnet/i.test(code)) return 'providers.aws.subnets: name subnets of this region';
  if (/Group/i.test(code)) return "providers.aws.securityGroupIds: name groups of the subnets' VPC";
  if (/AMI|Image/i.test(code)) return 'providers.aws.image: name an available image of this region';
  if (/KMS|Kms/i.test(code + msg)) return 'providers.aws.rootVolume.kmsKeyId: the key must exist and the controller may use it (kms:CreateGrant)';
  return 'see the error; a launch with this configuration would fail the same way';
}

/** The RunInstances a launch sends (provider.ts), with DryRun and no user data. */
function runInput(
  cfg: AwsProviderConfig,
  controllerId: string,
  a: { subnet: string; imageId: string; rootDeviceName: string; instanceType: string; groups: string[] },
): RunInstancesCommandInput {
  const tags = [
    { Key: TAGS.controllerId, Value: controllerId },
    { Key: 'Name', Value: 'cello-preflight' },
    ...Object.entries(cfg.extraTags).map(([Key, Value]) => ({ Key, Value })),
  ];
  const profile = cfg.instanceProfile;
  return {
    DryRun: true,
    ImageId: a.imageId,
    InstanceType: a.instanceType as RunInstancesCommandInput['InstanceType'],
    MinCount: 1,
    MaxCount: 1,
    SubnetId: a.subnet,
    ...(a.groups.length ? { SecurityGroupIds: a.groups } : {}),
    InstanceInitiatedShutdownBehavior: 'terminate',
    MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled', HttpPutResponseHopLimit: cfg.metadataHopLimit, InstanceMetadataTags: 'disabled' },
    BlockDeviceMappings: [
      {
        DeviceName: a.rootDeviceName,
        Ebs: {
          VolumeSize: cfg.rootVolume.sizeGiB,
          VolumeType: cfg.rootVolume.type,
          Encrypted: true,
          DeleteOnTermination: true,
          ...(cfg.rootVolume.kmsKeyId ? { KmsKeyId: cfg.rootVolume.kmsKeyId } : {}),
        },
      },
    ],
    TagSpecifications: [
      { ResourceType: 'instance', Tags: tags },
      { ResourceType: 'volume', Tags: tags },
    ],
    ...(profile ? { IamInstanceProfile: profile.startsWith('arn:') ? { Arn: profile } : { Name: profile } } : {}),
  };
}
