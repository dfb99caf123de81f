// A small AWS world inside moto for the provider tests: a VPC with one subnet in each of two
// zones, a controller security group, and a registered cell image.
import { CreateSecurityGroupCommand, CreateSubnetCommand, CreateVpcCommand, DescribeImagesCommand, EC2Client, RegisterImageCommand } from '@aws-sdk/client-ec2';
import type { MotoServer } from '@cello/testkit';
import { parseAwsProviderConfig, type AwsProviderConfig, type AwsProviderConfigInput } from '../../../src/providers/aws/index.js';

export interface MotoWorld {
  vpcId: string;
  subnets: Array<{ id: string; zone: string }>;
  controllerSg: string;
  imageId: string;
  imageName: string;
  /** The image's root device as EC2 reports it (moto: /dev/sda1). */
  rootDeviceName: string;
  /** An IAM instance profile that exists in moto (RunInstances checks). */
  instanceProfile: string;
  config(over?: Partial<AwsProviderConfigInput>): AwsProviderConfig;
  clientConfig: { region: string; credentials: { accessKeyId: string; secretAccessKey: string } };
}

export async function makeWorld(moto: MotoServer): Promise<MotoWorld> {
  const ec2 = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
  try {
    const vpc = await ec2.send(new CreateVpcCommand({ CidrBlock: '10.20.0.0/16' }));
    const vpcId = vpc.Vpc!.VpcId!;
    const subnets: MotoWorld['subnets'] = [];
    for (const [i, zone] of ['us-east-1a', 'us-east-1b'].entries()) {
      const s = await ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: `10.20.${i}.0/24`, AvailabilityZone: zone }));
      subnets.push({ id: s.Subnet!.SubnetId!, zone });
    }
    const sg = await ec2.send(new CreateSecurityGroupCommand({ GroupName: 'controller', Description: 'the controller', VpcId: vpcId }));
    const imageName = `cello-cell-${Date.now()}`;
    const img = await ec2.send(new RegisterImageCommand({ Name: imageName, Architecture: 'x86_64', RootDeviceName: '/dev/xvda', VirtualizationType: 'hvm' }));
    const described = await ec2.send(new DescribeImagesCommand({ ImageIds: [img.ImageId!] }));
    const instanceProfile = 'pod-role';
    await iamCall(moto, { Action: 'CreateInstanceProfile', InstanceProfileName: instanceProfile });
    const world: MotoWorld = {
      rootDeviceName: described.Images![0]!.RootDeviceName!,
      instanceProfile,
      vpcId,
      subnets,
      controllerSg: sg.GroupId!,
      imageId: img.ImageId!,
      imageName,
      clientConfig: { region: moto.region, credentials: moto.credentials },
      config: (over = {}) =>
        parseAwsProviderConfig({
          region: moto.region,
          endpoint: moto.endpoint,
          image: { id: img.ImageId! },
          subnets: subnets.map((s) => s.id),
          cellSecurityGroup: { vpcId, allowFromSecurityGroups: [sg.GroupId!] },
          // Tests must not wait minutes on SDK backoff.
          maxAttempts: 4,
          // Specs from the bundled snapshot; the catalog test turns the live read on.
          liveCatalog: false,
          ...over,
        }),
    };
    return world;
  } finally {
    ec2.destroy();
  }
}

/** One IAM query call to moto (no IAM SDK client in this package; moto does not check signatures). */
async function iamCall(moto: MotoServer, params: Record<string, string>): Promise<void> {
  const res = await fetch(moto.endpoint, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `AWS4-HMAC-SHA256 Credential=${moto.credentials.accessKeyId}/20260101/${moto.region}/iam/aws4_request, SignedHeaders=host, Signature=0`,
    },
    body: new URLSearchParams({ ...params, Version: '2010-05-08' }).toString(),
    signal: AbortSignal.timeout(10_000),
  });
  if (!res.ok && !(await res.text()).includes('EntityAlreadyExists')) throw new Error(`IAM ${params['Action']}: HTTP ${res.status}`);
}
