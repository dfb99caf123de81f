// ECR with the cell's instance profile: the agent gets its own GetAuthorizationToken token from
// moto (a real ECR API emulator), signed with the role credentials the IMDS test double serves,
// for ECR images a pod brought no credential for. The image service behind is a RECORDING TEST
// DOUBLE: a pull from an ECR host name cannot reach a registry here (no DNS for
// *.amazonaws.com), so what is checked is the credential each pull is given.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startImdsTestDouble, startMoto, type ImdsTestDouble, type MotoServer } from '@cello/testkit';
import { ImdsClient } from '../src/cloud/imds.js';
import { withEcrInstanceRole } from '../src/images/ecr.js';
import { ImagePullFailure, type ImageInfo, type ImageService, type RegistryAuth } from '../src/images/image-service.js';
import { agentConfigArgs } from '../src/bootstrap/first-boot.js';

const ACCOUNT = '123456789012'; // moto's account; its token is AWS:<account>-auth-token
const ECR_IMAGE = `${ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/team/app:1`;
const ROLES = '/latest/meta-data/iam/security-credentials/';

let moto: MotoServer;
let imds: ImdsTestDouble;
beforeAll(async () => {
  [moto, imds] = await Promise.all([startMoto(), startImdsTestDouble()]);
}, 60_000);
afterAll(async () => {
  await Promise.all([moto?.stop(), imds?.stop()]);
});

function roleCredentials(expiresInMs: number): string {
  return JSON.stringify({
    Code: 'Success',
    Type: 'AWS-HMAC',
    AccessKeyId: 'ASIAROLE',
    SecretAccessKey: 'role-secret',
    Token: 'role-session',
    Expiration: new Date(Date.now() + expiresInMs).toISOString(),
  });
}

/** RECORDING TEST DOUBLE of the registry image service: which credential each call carried. */
function recorder(): ImageService & { calls: Array<{ op: string; ref: string; auth: RegistryAuth | undefined }> } {
  const calls: Array<{ op: string; ref: string; auth: RegistryAuth | undefined }> = [];
  const info = (ref: string): ImageInfo => ({ ref, digest: 'sha256:0', config: { entrypoint: [], cmd: [], env: [], workingDir: '', user: '', stopSignal: '' }, layerDirs: [] });
  return {
    calls,
    cached: (ref, o) => (calls.push({ op: 'cached', ref, auth: o?.auth }), Promise.resolve(undefined)),
    pull: (ref, o) => (calls.push({ op: 'pull', ref, auth: o.auth }), Promise.resolve(info(ref))),
  };
}

describe('ECR with the instance profile (moto, IMDS test double)', () => {
  it("an ECR image without a pod credential pulls with a token got with the cell's role; other images and pod credentials pass untouched", async () => {
    imds.set(ROLES, 'cell-role\n');
    imds.set(`${ROLES}cell-role`, roleCredentials(6 * 3600_000));
    const inner = recorder();
    const images = withEcrInstanceRole(inner, { imds: new ImdsClient(imds.url), endpoint: moto.endpoint });
    try {
      await images.pull(ECR_IMAGE, {});
      await images.cached(ECR_IMAGE, {});
      await images.pull('127.0.0.1:5000/app:1', {});
      const own = { username: 'AWS', password: 'from-the-pod' };
      await images.pull(ECR_IMAGE, { auth: own });
      expect(inner.calls).toEqual([
        { op: 'pull', ref: ECR_IMAGE, auth: { username: 'AWS', password: `${ACCOUNT}-auth-token` } },
        { op: 'cached', ref: ECR_IMAGE, auth: { username: 'AWS', password: `${ACCOUNT}-auth-token` } },
        { op: 'pull', ref: '127.0.0.1:5000/app:1', auth: undefined },
        { op: 'pull', ref: ECR_IMAGE, auth: own },
      ]);
      // The role's credentials were read once (kept until near their expiry); the token was reused.
      expect(imds.gets.filter((p) => p === `${ROLES}cell-role`)).toHaveLength(1);
    } finally {
      images.close();
    }
  });

  it('no instance profile, or credentials instance metadata cannot give: a clear ImagePullFailure (auth), nothing pulled', async () => {
    imds.set(ROLES, undefined);
    const inner = recorder();
    const images = withEcrInstanceRole(inner, { imds: new ImdsClient(imds.url), endpoint: moto.endpoint });
    try {
      const err = await images.pull(ECR_IMAGE, {}).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImagePullFailure);
      expect((err as ImagePullFailure).kind).toBe('auth');
      expect((err as Error).message).toMatch(/no ECR token with the cell's instance role .*no instance profile/);
      imds.set(ROLES, 'broken-role');
      imds.set(`${ROLES}broken-role`, JSON.stringify({ Code: 'Success', AccessKeyId: 'ASIA' }));
      await expect(images.pull(ECR_IMAGE, {})).rejects.toThrow(/AccessKeyId, SecretAccessKey, Token and Expiration are required/);
      expect(inner.calls).toEqual([]);
    } finally {
      images.close();
    }
  });

  it('the ECR API refusing: the failure names the permission the role needs', async () => {
    imds.set(ROLES, 'cell-role');
    imds.set(`${ROLES}cell-role`, roleCredentials(6 * 3600_000));
    const images = withEcrInstanceRole(recorder(), { imds: new ImdsClient(imds.url), endpoint: 'http://127.0.0.1:1' });
    try {
      await expect(images.pull(ECR_IMAGE, {})).rejects.toThrow(/needs ecr:GetAuthorizationToken/);
    } finally {
      images.close();
    }
  });

  it("user data's agentConfig turns instance-profile into the serve flag, on AWS only", () => {
    expect(agentConfigArgs({ ecrCredentials: 'instance-profile' }, undefined, 'http://169.254.169.254')).toEqual(['--ecr-instance-profile', 'http://169.254.169.254']);
    expect(agentConfigArgs({ ecrCredentials: 'none' }, undefined, 'http://169.254.169.254')).toEqual([]);
    expect(() => agentConfigArgs({ ecrCredentials: 'instance-profile' })).toThrow('needs EC2 instance metadata');
    expect(() => agentConfigArgs({ ecrCredentials: 'root' }, undefined, 'http://x')).toThrow('user data: agentConfig.ecrCredentials: expected "instance-profile" or "none"');
  });
});
