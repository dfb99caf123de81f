// Configuration of the aws provider: the `providers.aws` section of the controller's YAML,
// validated at start with errors that name the field. Credentials are never configured here:
// the AWS SDK's default chain finds them (environment, shared config/profiles, web identity /
// IRSA, instance metadata), so no secret ever sits in the controller's configuration.
import { isIPv4, isIPv6 } from 'node:net';
import { z } from 'zod';

const cidr = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$|^[0-9a-fA-F:]+\/\d{1,3}$/, 'must be a CIDR such as 10.0.0.0/16');

/**
 * A cluster network range that may reach every pod port of every cell: a real CIDR in EC2's
 * canonical form (no host bits, which EC2 would refuse at start), and never the whole internet.
 */
const clusterCidr = z.string().superRefine((c, ctx) => {
  const [addr = '', bits = '', extra] = c.split('/');
  const v4 = isIPv4(addr);
  const max = v4 ? 32 : 128;
  if (extra !== undefined || !(v4 || isIPv6(addr)) || !/^\d{1,3}$/.test(bits) || Number(bits) > max) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(c)} is not a CIDR such as 10.0.0.0/16 or fd00::/64` });
  } else if (Number(bits) === 0) {
    ctx.addIssue({ code: 'custom', message: `${c} would admit every address to every pod port: list the cluster's own ranges` });
  } else if (v4) {
    const n = addr.split('.').reduce((a, o) => a * 256 + Number(o), 0);
    const size = 2 ** (32 - Number(bits));
    if (n % size !== 0) {
      const base = n - (n % size);
      ctx.addIssue({ code: 'custom', message: `${c} has host bits set: did you mean ${[24, 16, 8, 0].map((s) => Math.floor(base / 2 ** s) % 256).join('.')}/${bits}?` });
    }
  }
});

export const awsProviderConfigSchema = z
  .object({
    /** Region; falls back to the SDK chain (AWS_REGION, profile). */
    region: z.string().min(1).optional(),
    /** EC2 API endpoint override: tests (moto) and EC2-compatible clouds. */
    endpoint: z.string().url().optional(),
    /** Shared-config profile name; otherwise the default chain. */
    profile: z.string().min(1).optional(),
    /** The cell image: an AMI ID, or the newest image whose name matches a filter, from these owners. */
    image: z.union([
      z.object({ id: z.string().regex(/^ami-[0-9a-f]+$/, 'must be an AMI ID such as ami-0123456789abcdef0') }),
      z.object({ name: z.string().min(1), owners: z.array(z.string().min(1)).min(1) }),
    ]),
    /** Subnets to launch in, ideally one per availability zone; tried in order for capacity. */
    subnets: z.array(z.string().regex(/^subnet-[0-9a-f]+$/, 'must be a subnet ID')).min(1),
    /** Extra security groups for every cell (in addition to the managed cell group, if any). */
    securityGroupIds: z.array(z.string().regex(/^sg-[0-9a-f]+$/, 'must be a security group ID')).default([]),
    /**
     * The controller creates (or finds, if it created it before) one security group for cells
     * that admits the agent port only from the controller's own security group and/or these
     * CIDRs, and pod traffic (every port but the agent's) from other cells and `clusterCidrs`.
     * Rules it added that are no longer configured are revoked at start.
     */
    cellSecurityGroup: z
      .object({
        name: z.string().min(1).default('cello-cells'),
        vpcId: z.string().regex(/^vpc-[0-9a-f]+$/, 'must be a VPC ID'),
        allowFromSecurityGroups: z.array(z.string().regex(/^sg-[0-9a-f]+$/, 'must be a security group ID')).default([]),
        allowFromCidrs: z.array(cidr).default([]),
        /** Pods on other cells reach this cell's pod (a rule naming the group itself). */
        allowBetweenCells: z.boolean().default(true),
        /**
         * Other networks of the cluster whose pods and nodes reach pods on cells (e.g. the pod
         * CIDR of kubelet nodes, the nodes' subnets): every port but the agent's.
         */
        clusterCidrs: z.array(clusterCidr).default([]),
      })
      .strict()
      .refine((g) => g.allowFromSecurityGroups.length + g.allowFromCidrs.length > 0, {
        message: 'needs allowFromSecurityGroups or allowFromCidrs: nothing could reach the agents',
      })
      .optional(),
    /** Default instance profile (name or ARN) of every cell. */
    instanceProfile: z.string().min(1).optional(),
    /**
     * Which pods may pick another profile with the cello.io/aws-instance-profile annotation: a
     * pod's role is the instance's, so without a rule any pod creator could take any role the
     * controller may pass. None by default; `*` matches any namespace or profile.
     */
    instanceProfiles: z
      .object({
        allowed: z
          .array(
            z
              .object({
                namespaces: z.array(z.string().min(1)).min(1, 'list at least one namespace (or "*")'),
                profiles: z.array(z.string().min(1)).min(1, 'list at least one profile name or ARN (or "*")'),
              })
              .strict(),
          )
          .default([]),
      })
      .strict()
      .default({ allowed: [] }),
    rootVolume: z
      .object({
        sizeGiB: z.number().int().min(4).max(16384).default(20),
        type: z.enum(['gp3', 'gp2', 'io1', 'io2', 'standard']).default('gp3'),
        /** KMS key for EBS encryption; the account default key when absent. Encryption is always on. */
        kmsKeyId: z.string().min(1).optional(),
      })
      .default({ sizeGiB: 20, type: 'gp3' }),
    /**
     * IMDS hop limit. 2 lets the pod (in its own network namespace, one hop further) reach the
     * instance metadata and so its instance profile: on Cello the instance *is* the pod.
     */
    metadataHopLimit: z.number().int().min(1).max(64).default(2),
    spot: z
      .object({
        /** Launch spot unless the pod says otherwise. */
        default: z.boolean().default(false),
        /**
         * When spot has no capacity in any zone, launch on-demand instead of failing the
         * candidate. Off by default: the controller's candidate list already goes on to
         * on-demand for pods that prefer spot, and a pod that requires spot must not get it.
         */
        fallbackToOnDemand: z.boolean().default(false),
      })
      .default({ default: false, fallbackToOnDemand: false }),
    /** How the controller reaches agents: the instance's private IP (same VPC) or its public IP. */
    addressType: z.enum(['private', 'public']).default('private'),
    /** A (type, zone) pair that reported no capacity is skipped for this long. */
    capacityBackoffSeconds: z.number().int().min(0).default(300),
    /** SDK attempts per call (throttling and transient errors are retried with backoff). */
    maxAttempts: z.number().int().min(1).max(20).default(8),
    /** Instance types offered to selection (globs allowed); all of the catalog when absent. */
    instanceTypes: z.array(z.string().min(1)).optional(),
    /** Replacement price file (same format as data/aws-prices.json). */
    pricesFile: z.string().min(1).optional(),
    /** Read specs live with DescribeInstanceTypes (cached); false uses the bundled snapshot only. */
    liveCatalog: z.boolean().default(true),
    /** Extra tags on every instance and volume. */
    extraTags: z.record(z.string(), z.string()).default({}),
    /**
     * Images from ECR (`<account>.dkr.ecr.<region>.amazonaws.com`): `controller` pulls them with
     * a GetAuthorizationToken token the controller gets (its default credential chain, the
     * endpoint above) and sends to the pod's cell; `instance-profile` lets each cell get its own
     * with its instance profile's role (renewed on the cell, never sent; the role needs
     * ecr:GetAuthorizationToken and read access); `off` leaves them to imagePullSecrets.
     */
    ecr: z
      .object({
        mode: z.enum(['controller', 'instance-profile', 'off']).default('controller'),
        /** A token (valid 12 h) is replaced this many minutes before it expires. */
        refreshBeforeMinutes: z.number().int().min(1).max(660).default(60),
      })
      .strict()
      .default({ mode: 'controller', refreshBeforeMinutes: 60 }),
  })
  .strict()
  .refine((c) => c.ecr.mode !== 'instance-profile' || c.instanceProfile !== undefined, {
    message: 'ecr.mode instance-profile needs instanceProfile: the cells get their ECR tokens with its role',
    path: ['ecr', 'mode'],
  });

export type AwsProviderConfig = z.infer<typeof awsProviderConfigSchema>;
export type AwsProviderConfigInput = z.input<typeof awsProviderConfigSchema>;

/** Validates the `providers.aws` section; the error names the field, e.g. `providers.aws.subnets.0`. */
export function parseAwsProviderConfig(input: unknown, path = 'providers.aws'): AwsProviderConfig {
  const r = awsProviderConfigSchema.safeParse(input);
  if (!r.success) {
    const msgs = r.error.issues.map((i) => `${[path, ...i.path.map(String)].join('.')}: ${i.message}`);
    throw new Error(`invalid configuration: ${msgs.join('; ')}`);
  }
  return r.data;
}

/** Pod annotations the aws provider honours (passed by the core in LaunchRequest.options). */
export const ANNOTATIONS = {
  instanceProfile: 'cello.io/aws-instance-profile',
  rootVolumeGiB: 'cello.io/aws-root-volume-gib',
  spot: 'cello.io/spot',
} as const;

/**
 * Tag keys: how the controller finds what it owns, whatever happened to its store. The same
 * keys the reconciler puts in LaunchRequest.tags (src/reconcile/context.ts TAG_*).
 */
export const TAGS = {
  controllerId: 'cello.io/controller-id',
  cellId: 'cello.io/cell-id',
  /** namespace/name of the pod the cell was launched for (absent for warm-pool cells). */
  pod: 'cello.io/pod',
  /** The agent's port, so describe can say where the agent listens without the store. */
  agentPort: 'cello.io/agent-port',
} as const;
