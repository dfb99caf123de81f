// ECR tokens against moto server (a real ECR API emulator that serves GetAuthorizationToken):
// the controller asks once per region, keeps the token until an hour before its 12 h expiry,
// and gives it only for ECR hosts the pod's images name.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ECRClient } from '@aws-sdk/client-ecr';
import { startMoto, type MotoServer } from '@cello/testkit';
import { EcrTokens, ecrRegion } from '../../src/registry/ecr.js';
import { podPullCredentials } from '../../src/registry/pull-credentials.js';
import { parseAwsProviderConfig } from '../../src/providers/aws/index.js';
import { PodSpec } from '@cello/proto/cell';

let moto: MotoServer;
beforeAll(async () => {
  moto = await startMoto();
}, 60_000);
afterAll(async () => {
  await moto?.stop();
});

const ACCOUNT = '123456789012'; // moto's account
const ECR_IMAGE = `${ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/team/app:1`;

/** EcrTokens on moto, counting the GetAuthorizationToken calls that reach it. */
function tokens(now?: () => number) {
  const calls: string[] = [];
  const t = new EcrTokens({
    ...(now ? { now } : {}),
    client: (region) => {
      const c = new ECRClient({ region, endpoint: moto.endpoint, credentials: moto.credentials });
      c.middlewareStack.add(
        (next, ctx) => (args) => {
          calls.push(`${region}:${ctx.commandName}`);
          return next(args);
        },
        { step: 'initialize' },
      );
      return c;
    },
  });
  return { t, calls };
}

describe('ECR tokens (moto)', () => {
  it('knows ECR hosts and their regions', () => {
    expect(ecrRegion(`${ACCOUNT}.dkr.ecr.eu-west-3.amazonaws.com`)).toBe('eu-west-3');
    expect(ecrRegion(`${ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com`)).toBe('us-gov-west-1');
    expect(ecrRegion(`${ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn`)).toBe('cn-north-1');
    expect(ecrRegion('public.ecr.aws')).toBeUndefined();
    expect(ecrRegion(`${ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com.evil.example`)).toBeUndefined();
    expect(ecrRegion(`x${ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com`)).toBeUndefined();
  });

  it('an ECR image gets the token for its host, decoded as AWS:<password>; other images get nothing and cost no call', async () => {
    const { t, calls } = tokens();
    expect(await t.keyrings(['busybox', '127.0.0.1:5000/app:1'])).toEqual([]);
    expect(calls).toEqual([]);
    const spec = PodSpec.fromPartial({
      containers: [
        { name: 'a', image: ECR_IMAGE },
        { name: 'b', image: 'busybox' },
      ],
    });
    const r = podPullCredentials(spec, {}, await t.keyrings([ECR_IMAGE, 'busybox']));
    expect(r.credentials).toEqual([{ registry: `${ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com`, username: 'AWS', password: `${ACCOUNT}-auth-token`, identityToken: '' }]);
    expect(calls).toEqual(['us-east-1:GetAuthorizationTokenCommand']);
    t.close();
  });

  it('a token is reused until an hour before it expires, then replaced; concurrent pods share one call; an expired one is never used', async () => {
    // moto's token expires at a fixed instant; the clock is set relative to it.
    const probe = tokens();
    const expiresAt = (await probe.t.token('us-east-1')).expiresAt;
    probe.t.close();
    let clock = expiresAt - 5 * 3600_000;
    const { t, calls } = tokens(() => clock);
    await Promise.all([t.keyrings([ECR_IMAGE]), t.keyrings([ECR_IMAGE]), t.keyrings([ECR_IMAGE])]);
    expect(calls).toHaveLength(1);
    clock = expiresAt - 61 * 60_000;
    await t.keyrings([ECR_IMAGE]);
    expect(calls).toHaveLength(1);
    clock = expiresAt - 59 * 60_000; // inside the refresh window
    await t.keyrings([ECR_IMAGE]);
    expect(calls).toHaveLength(2);
    // Another region is its own token.
    await t.keyrings([`${ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/app`]);
    expect(calls).toEqual(['us-east-1:GetAuthorizationTokenCommand', 'us-east-1:GetAuthorizationTokenCommand', 'eu-west-1:GetAuthorizationTokenCommand']);
    t.close();
    // On the real clock moto's token (from 2015) is expired: asked for anew every time.
    const real = tokens();
    await real.t.keyrings([ECR_IMAGE]);
    await real.t.keyrings([ECR_IMAGE]);
    expect(real.calls).toHaveLength(2);
    real.t.close();
  });

  it('no token (the API refuses): the pull goes ahead without credentials', async () => {
    const t = new EcrTokens({ client: (region) => new ECRClient({ region, endpoint: 'http://127.0.0.1:1', credentials: moto.credentials, maxAttempts: 1 }) });
    expect((await t.keyrings([ECR_IMAGE]))[0]!.lookup(ECR_IMAGE)).toEqual([]);
    t.close();
  });

  it('configuration: controller mode by default, off on request, bad values named', () => {
    const base = { image: { id: 'ami-0123456789abcdef0' }, subnets: ['subnet-0123'] };
    expect(parseAwsProviderConfig(base).ecr).toEqual({ mode: 'controller', refreshBeforeMinutes: 60 });
    expect(parseAwsProviderConfig({ ...base, ecr: { mode: 'off' } }).ecr.mode).toBe('off');
    expect(() => parseAwsProviderConfig({ ...base, ecr: { mode: 'instance' } })).toThrow(/providers\.aws\.ecr\.mode/);
    expect(() => parseAwsProviderConfig({ ...base, ecr: { refreshBeforeMinutes: 720 } })).toThrow(/providers\.aws\.ecr\.refreshBeforeMinutes/);
  });
});
