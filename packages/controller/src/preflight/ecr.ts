// Preflight of ECR pulls: ECR has no DryRun, so with `ecr.mode: controller` the check is the
// call the controller makes for every ECR pod, GetAuthorizationToken, made once for real (the
// token is dropped). With `instance-profile` each cell asks with its own role, which the
// controller cannot act as: that is said, not passed.
import { ECRClient, GetAuthorizationTokenCommand, type ECRClientConfig } from '@aws-sdk/client-ecr';
import { errMsg } from '@cello/proto';
import { errorCode } from '../providers/aws/capacity.js';
import type { AwsProviderConfig } from '../providers/aws/config.js';
import { fail, ok, warn, type CheckResult } from './result.js';

const DENIED = new Set(['UnauthorizedOperation', 'AccessDenied', 'AccessDeniedException', 'UnauthorizedAccess', 'UnrecognizedClientException']);
export const ECR_CHECK = 'ecr:GetAuthorizationToken';

export async function ecrPreflight(cfg: AwsProviderConfig, clientConfig: Partial<ECRClientConfig> = {}): Promise<CheckResult[]> {
  if (cfg.ecr.mode === 'off') return [];
  if (cfg.ecr.mode === 'instance-profile') {
    return [
      warn(
        `${ECR_CHECK} (cells)`,
        `not checked: with ecr.mode instance-profile each cell asks with the role of ${cfg.instanceProfile ?? 'its instance profile'}`,
        "that role needs ecr:GetAuthorizationToken and read access (ecr:BatchGetImage, ecr:GetDownloadUrlForLayer) to the images' repositories",
      ),
    ];
  }
  const ecr = new ECRClient({
    ...(cfg.region ? { region: cfg.region } : {}),
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    ...(cfg.profile ? { profile: cfg.profile } : {}),
    maxAttempts: cfg.maxAttempts,
    ...clientConfig,
  });
  try {
    const out = await ecr.send(new GetAuthorizationTokenCommand({}));
    const data = out.authorizationData?.[0];
    if (!data?.authorizationToken) return [fail(ECR_CHECK, 'the answer holds no authorization data', 'providers.aws.endpoint/region must reach ECR')];
    const expires = data.expiresAt ? `, valid until ${data.expiresAt.toISOString()}` : '';
    return [ok(ECR_CHECK, `token issued for ${data.proxyEndpoint ?? 'the region'}${expires}`)];
  } catch (err) {
    const code = errorCode(err) ?? 'unknown';
    const fixOff = 'or set providers.aws.ecr.mode: off if no pod pulls from ECR';
    const denied = deniedMessage(err);
    if (DENIED.has(code) || denied !== undefined) {
      return [fail(ECR_CHECK, `denied: ${denied ?? errMsg(err)}`, `grant ecr:GetAuthorizationToken to the controller's IAM identity (docs/aws.md), ${fixOff}`)];
    }
    return [fail(ECR_CHECK, `${code}: ${errMsg(err)}`, `ECR must answer in this region (providers.aws.region, endpoint, credentials), ${fixOff}`)];
  } finally {
    ecr.destroy();
  }
}

/**
 * A 403 whose body the JSON protocol could not read: an IAM denial answered in the query
 * protocol's XML (moto does this; a proxy in front of ECR may too). Its <Message>, if any.
 */
function deniedMessage(err: unknown): string | undefined {
  const e = err as { $metadata?: { httpStatusCode?: number }; $response?: { statusCode?: number }; $responseBodyText?: string };
  const status = e.$metadata?.httpStatusCode ?? e.$response?.statusCode;
  if (status !== 403) return undefined;
  return /<Message>([^<]*)<\/Message>/.exec(e.$responseBodyText ?? '')?.[1] ?? 'HTTP 403 (access denied; the answer was not in the JSON ECR speaks)';
}
