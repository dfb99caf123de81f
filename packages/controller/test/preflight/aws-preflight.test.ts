// Preflight of the aws provider against the real EC2 emulator (moto answers DryRun): a good
// configuration passes every check, and each broken one (missing subnet, security group, AMI or
// instance profile, an AMI of the wrong architecture, an unreachable store, an invalid file)
// fails its own check with the fix. The CLI prints the table and exits 1; the daemon runs the
// same checks at start, refuses to start on a failure, and starts anyway with --skip-preflight.
import { execFile, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateSubnetCommand, CreateVpcCommand, EC2Client, RegisterImageCommand } from '@aws-sdk/client-ec2';
import { freePort, startMoto, waitExit, waitFor, type MotoServer } from '@cello/testkit';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { silentLogger } from '../../src/obs/logger.js';
import { formatPreflightTable, preflightConfig, preflightFailed, preflightFile, type CheckResult } from '../../src/preflight/index.js';
import { CONTROLLER_BIN } from '../helpers/cluster.js';
import { makeWorld, type MotoWorld } from '../providers/aws/moto-world.js';

/** moto's bundled AMIs (amis.json), one of each architecture (RegisterImage drops Architecture). */
const MOTO_ARM_AMI = 'ami-0e9271c829888680e';
const MOTO_X86_AMI = 'ami-000c540e28953ace2';
const NO_SUBNET = 'subnet-0123456789abcdef0';
const NO_GROUP = 'sg-0123456789abcdef0';
const NO_AMI = 'ami-0123456789abcdef0';

let moto: MotoServer;
let world: MotoWorld;
let dir: string;

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  dir = mkdtempSync(join(tmpdir(), 'cello-preflight-'));
}, 60_000);

afterAll(async () => {
  await moto?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function rawConfig(aws: Record<string, unknown> = {}, top: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    controllerId: 'preflight-test',
    api: { insecure: true },
    security: { mode: 'insecure-dev' },
    store: { kind: 'embedded', dir: join(dir, 'store') },
    provider: {
      kind: 'aws',
      region: moto.region,
      endpoint: moto.endpoint,
      image: { id: world.imageId },
      subnets: world.subnets.map((s) => s.id),
      cellSecurityGroup: { vpcId: world.vpcId, allowFromSecurityGroups: [world.controllerSg] },
      instanceProfile: world.instanceProfile,
      instanceTypes: ['t3.*'],
      liveCatalog: false,
      maxAttempts: 2,
      ...aws,
    },
    ...top,
  };
}

const run = (aws: Record<string, unknown> = {}, top: Record<string, unknown> = {}) =>
  preflightConfig(parseConfig(rawConfig(aws, top)), { log: silentLogger(), awsClientConfig: world.clientConfig, storeTimeoutMs: 3000 });

/** Whether something accepts TCP connections on 127.0.0.1:port. */
const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });

const failures = (rs: CheckResult[]) => rs.filter((r) => r.status === 'fail');
const only = (rs: CheckResult[]) => {
  const f = failures(rs);
  expect(f, formatPreflightTable(rs)).toHaveLength(1);
  return f[0]!;
};

describe('aws preflight on moto', () => {
  it('passes a good configuration, every EC2 action checked with DryRun', async () => {
    const rs = await run();
    expect(failures(rs), formatPreflightTable(rs)).toEqual([]);
    expect(preflightFailed(rs)).toBe(false);
    const checks = rs.map((r) => r.check);
    for (const s of world.subnets) {
      expect(checks).toContain(`subnet ${s.id}`);
      const launch = rs.find((r) => r.check.startsWith(`ec2:RunInstances (${s.id},`));
      expect(launch, formatPreflightTable(rs)).toMatchObject({ status: 'ok', detail: 'allowed (DryRun)' });
      expect(launch!.check).toContain(`profile ${world.instanceProfile}`);
    }
    for (const a of ['ec2:CreateTags', 'ec2:TerminateInstances', 'ec2:DescribeInstances', 'ec2:CreateSecurityGroup']) {
      expect(
        rs.find((r) => r.check.startsWith(a)),
        a,
      ).toMatchObject({ status: 'ok', detail: 'allowed (DryRun)' });
    }
    expect(rs.find((r) => r.check.startsWith('image '))).toMatchObject({ status: 'ok', detail: `amd64: ${world.imageId}` });
    expect(rs.find((r) => r.check.startsWith('store'))).toMatchObject({ status: 'ok' });
    // ECR has no DryRun: the token call itself, answered by moto's ECR.
    expect(rs.find((r) => r.check === 'ecr:GetAuthorizationToken')).toMatchObject({ status: 'ok', detail: expect.stringMatching(/^token issued for https:\/\/.*valid until /) });
  }, 60_000);

  it('checks ECR only when the controller pulls from it (ecr.mode)', async () => {
    const off = await run({ ecr: { mode: 'off' } });
    expect(off.some((r) => r.check.startsWith('ecr:'))).toBe(false);
    const cells = await run({ ecr: { mode: 'instance-profile' } });
    expect(cells.find((r) => r.check.startsWith('ecr:'))).toMatchObject({
      check: 'ecr:GetAuthorizationToken (cells)',
      status: 'warn',
      detail: expect.stringContaining(`role of ${world.instanceProfile}`),
    });
  }, 60_000);

  it('fails ECR that does not answer, naming the setting', async () => {
    // An endpoint nobody listens on: EC2 fails too, the ECR check says its own reason.
    const port = await freePort();
    const rs = await run({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1 });
    expect(rs.find((r) => r.check === 'ecr:GetAuthorizationToken')).toMatchObject({
      status: 'fail',
      fix: expect.stringMatching(/^ECR must answer in this region .*ecr\.mode: off/),
    });
  }, 60_000);

  it('names a missing subnet', async () => {
    const f = only(await run({ subnets: [...world.subnets.map((s) => s.id), NO_SUBNET] }));
    expect(f.check).toBe(`subnet ${NO_SUBNET}`);
    expect(f.detail).toBe('not found');
    expect(f.fix).toContain(`providers.aws.subnets: remove ${NO_SUBNET}`);
  }, 60_000);

  it('names a missing security group', async () => {
    const f = only(await run({ securityGroupIds: [NO_GROUP] }));
    expect(f.check).toBe(`security group ${NO_GROUP}`);
    expect(f.fix).toContain('providers.aws.securityGroupIds');
  }, 60_000);

  it('names a missing AMI', async () => {
    const rs = await run({ image: { id: NO_AMI } });
    const f = failures(rs);
    expect(f.map((r) => r.check)).toEqual([`image providers.aws.image.id (${NO_AMI})`, 'ec2:RunInstances']);
    expect(f[0]!.detail).toContain('InvalidAMIID.NotFound');
    expect(f[0]!.fix).toContain('providers.aws.image.id: name an image that exists');
  }, 60_000);

  it("fails an AMI whose architecture none of the catalog's types has", async () => {
    const f = failures(await run({ image: { id: MOTO_ARM_AMI } }));
    expect(f[0]!.check).toBe(`image providers.aws.image.id (${MOTO_ARM_AMI})`);
    expect(f[0]!.detail).toContain('is arm64, the instance type needs x86_64');
    expect(f[0]!.fix).toContain('use an image built for x86_64');
  }, 60_000);

  it('warns when only some of the catalog has an image', async () => {
    const rs = await run({ image: { id: MOTO_X86_AMI }, instanceTypes: ['t3.*', 't4g.*'] });
    expect(failures(rs), formatPreflightTable(rs)).toEqual([]);
    expect(rs.find((r) => r.check === 'image for arm64')).toMatchObject({ status: 'warn' });
    expect(rs.find((r) => r.check === 'image for arm64')!.detail).toContain('is x86_64, the instance type needs arm64');
  }, 60_000);

  it('names a missing instance profile at RunInstances', async () => {
    const rs = await run({ instanceProfile: 'no-such-profile' });
    const f = failures(rs);
    expect(f.length, formatPreflightTable(rs)).toBe(world.subnets.length);
    expect(f[0]!.check).toContain('ec2:RunInstances');
    expect(f[0]!.detail).toContain('no-such-profile');
    expect(f[0]!.fix).toContain('providers.aws.instanceProfile: no-such-profile must be an existing instance profile');
  }, 60_000);

  it('fails an unreachable store within its deadline', async () => {
    const port = await freePort();
    const started = Date.now();
    const f = only(await run({}, { store: { kind: 'etcd', endpoints: [`http://127.0.0.1:${port}`], requestTimeoutMs: 1000 } }));
    expect(f.check).toBe(`store (etcd, http://127.0.0.1:${port})`);
    expect(f.fix).toContain('store.endpoints');
    expect(Date.now() - started).toBeLessThan(30_000);
  }, 60_000);

  it('fails an invalid file naming the field, without going further', async () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, stringify(rawConfig({}, { warmPool: [{ instanceType: 't3.micro', size: 'two' }] })));
    const rs = await preflightFile(file, { log: silentLogger() });
    expect(rs).toHaveLength(1);
    expect(rs[0]).toMatchObject({ check: 'configuration', status: 'fail' });
    expect(rs[0]!.detail).toContain('warmPool[0].size');
  });

  it('`controller preflight` prints the table and exits 1 on a failure', async () => {
    const file = join(dir, 'missing-subnet.yaml');
    writeFileSync(file, stringify(rawConfig({ subnets: [NO_SUBNET, world.subnets[0]!.id] })));
    const env = { ...process.env, AWS_ACCESS_KEY_ID: moto.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: moto.credentials.secretAccessKey };
    const r = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(process.execPath, [CONTROLLER_BIN, 'preflight', '-c', file], { env, timeout: 60_000 }, (err, stdout) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout }),
      ),
    );
    expect(r.code, r.stdout).toBe(1);
    expect(r.stdout).toMatch(/^CHECK\s+RESULT\s+DETAIL$/m);
    expect(r.stdout).toMatch(new RegExp(`^subnet ${NO_SUBNET}\\s+FAIL\\s+not found; fix: providers.aws.subnets`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^ec2:RunInstances \\(${world.subnets[0]!.id}.*OK`, 'm'));
    expect(r.stdout).toMatch(/^1 of \d+ checks failed$/m);
  }, 90_000);

  it('the daemon runs the same checks at start: a failure is logged with its fix and it does not start; --skip-preflight starts it anyway, saying so', async () => {
    const [apiPort, metricsPort] = [await freePort(), await freePort()];
    const file = join(dir, 'start-missing-subnet.yaml');
    writeFileSync(
      file,
      stringify(
        rawConfig(
          { subnets: [NO_SUBNET, world.subnets[0]!.id] },
          {
            log: { level: 'info' },
            api: { insecure: true, listen: `127.0.0.1:${apiPort}` },
            metrics: { listen: `127.0.0.1:${metricsPort}` },
            store: { kind: 'embedded', dir: join(dir, 'start-store') },
          },
        ),
      ),
    );
    const env = { ...process.env, AWS_ACCESS_KEY_ID: moto.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: moto.credentials.secretAccessKey };
    const daemon = (args: string[]) => {
      const child = spawn(process.execPath, [CONTROLLER_BIN, '-c', file, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const out = { text: '' };
      child.stdout.on('data', (b: Buffer) => (out.text += b.toString()));
      child.stderr.on('data', (b: Buffer) => (out.text += b.toString()));
      return { child, out };
    };

    const refused = daemon([]);
    const exit = await waitExit(refused.child, { timeoutMs: 60_000, what: 'the controller with a failing preflight' });
    expect(exit.code, refused.out.text).toBe(1);
    const failed = refused.out.text
      .split('\n')
      .filter((l) => l.includes('"preflight check failed"'))
      .map((l) => JSON.parse(l) as { preflight: string; detail: string; fix?: string });
    expect(failed.map((f) => f.preflight)).toEqual([`subnet ${NO_SUBNET}`]);
    expect(failed[0]!.fix).toMatch(/providers\.aws\.subnets/);
    expect(refused.out.text).toMatch(/"preflight":"ec2:RunInstances[^\n]*"msg":"preflight check passed"/);
    expect(refused.out.text).toContain('preflight failed; not starting');
    expect(await listening(apiPort)).toBe(false);

    const skipped = daemon(['--skip-preflight']);
    try {
      await waitFor('the controller API to listen despite the failing check', () => listening(apiPort), { timeoutMs: 60_000, intervalMs: 200 }).catch((err: Error) => {
        throw new Error(`${err.message}; output: ${skipped.out.text}`);
      });
      expect(skipped.out.text).toContain('preflight skipped (--skip-preflight)');
      expect(skipped.out.text).not.toContain('preflight check');
    } finally {
      skipped.child.kill('SIGTERM');
      await waitExit(skipped.child, { timeoutMs: 60_000, what: 'the controller started with --skip-preflight' });
    }
  }, 180_000);
});

/** One IAM query call to moto before it enforces IAM (unsigned; the header only routes it to IAM). */
async function iamQuery(m: MotoServer, params: Record<string, string>): Promise<string> {
  const res = await fetch(m.endpoint, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `AWS4-HMAC-SHA256 Credential=${m.credentials.accessKeyId}/20260101/${m.region}/iam/aws4_request, SignedHeaders=host, Signature=0`,
    },
    body: new URLSearchParams({ ...params, Version: '2010-05-08' }).toString(),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`IAM ${params['Action']}: HTTP ${res.status}: ${text}`);
  return text;
}

/** A moto IAM user allowed `actions`, and its access key (3 requests). */
async function iamUser(m: MotoServer, name: string, actions: string[]): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  await iamQuery(m, { Action: 'CreateUser', UserName: name });
  const keys = await iamQuery(m, { Action: 'CreateAccessKey', UserName: name });
  const policy = { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: actions, Resource: '*' }] };
  await iamQuery(m, { Action: 'PutUserPolicy', UserName: name, PolicyName: 'cello', PolicyDocument: JSON.stringify(policy) });
  const pick = (tag: string) => new RegExp(`<${tag}>([^<]+)</${tag}>`).exec(keys)?.[1] ?? '';
  return { accessKeyId: pick('AccessKeyId'), secretAccessKey: pick('SecretAccessKey') };
}

describe('aws preflight with IAM enforced (moto checks each call against the user policy)', () => {
  let m: MotoServer;
  let limited: { accessKeyId: string; secretAccessKey: string };
  let raw: Record<string, unknown>;

  beforeAll(async () => {
    // Six unsigned requests make the two users; every request after is signed and authorized.
    m = await startMoto({ enforceIamAfter: 6 });
    const admin = await iamUser(m, 'admin', ['*']);
    limited = await iamUser(m, 'describe-only', ['ec2:Describe*']);
    const ec2 = new EC2Client({ endpoint: m.endpoint, region: m.region, credentials: admin });
    try {
      const vpc = await ec2.send(new CreateVpcCommand({ CidrBlock: '10.30.0.0/16' }));
      const subnet = await ec2.send(new CreateSubnetCommand({ VpcId: vpc.Vpc!.VpcId!, CidrBlock: '10.30.0.0/24', AvailabilityZone: 'us-east-1a' }));
      const img = await ec2.send(new RegisterImageCommand({ Name: 'cello-cell-iam', Architecture: 'x86_64', RootDeviceName: '/dev/xvda', VirtualizationType: 'hvm' }));
      raw = {
        controllerId: 'preflight-iam',
        api: { insecure: true },
        security: { mode: 'insecure-dev' },
        store: { kind: 'embedded', dir: join(dir, 'store-iam') },
        provider: {
          kind: 'aws',
          region: m.region,
          endpoint: m.endpoint,
          image: { id: img.ImageId! },
          subnets: [subnet.Subnet!.SubnetId!],
          instanceTypes: ['t3.*'],
          liveCatalog: false,
          maxAttempts: 2,
        },
      };
    } finally {
      ec2.destroy();
    }
  }, 60_000);

  afterAll(async () => {
    await m?.stop();
  });

  it('names each EC2 action the identity may not call, and the grant that fixes it', async () => {
    const rs = await preflightConfig(parseConfig(raw), { log: silentLogger(), awsClientConfig: { region: m.region, credentials: limited } });
    const failed = failures(rs);
    expect(failed.map((r) => r.check.replace(/ \(.*$/, '')).sort(), formatPreflightTable(rs)).toEqual([
      'ec2:CreateTags',
      'ec2:RunInstances',
      'ec2:TerminateInstances',
      'ecr:GetAuthorizationToken',
    ]);
    const ecr = failed.find((r) => r.check === 'ecr:GetAuthorizationToken')!;
    // moto answers the denial in XML, which the ECR client cannot read: the 403 is what tells.
    expect(ecr.detail).toMatch(/^denied: (.*ecr:GetAuthorizationToken|HTTP 403 \(access denied)/);
    expect(ecr.fix).toMatch(/^grant ecr:GetAuthorizationToken to the controller's IAM identity/);
    for (const f of failed.filter((r) => r !== ecr)) {
      const action = f.check.replace(/ \(.*$/, '');
      expect(f.detail).toMatch(new RegExp(`^denied: .*not authorized to perform: ${action}`));
      expect(f.fix).toBe(`grant ${action} to the controller's IAM identity (docs/aws.md lists the policy)`);
    }
    // What the policy allows passes, proven by the same DryRun.
    expect(rs.find((r) => r.check === 'ec2:DescribeInstances')).toMatchObject({ status: 'ok', detail: 'allowed (DryRun)' });
  }, 60_000);
});
