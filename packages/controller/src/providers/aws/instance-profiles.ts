// The cello.io/aws-instance-profile annotation, allowed per namespace
// (provider.instanceProfiles.allowed): the instance profile is the pod's AWS identity.
import { annotatedIdentityRefusal } from '../annotated-identity.js';
import { ANNOTATIONS, type AwsProviderConfig } from './config.js';

/**
 * Why a pod in `namespace` may not use the instance profile its annotations ask for, naming the
 * rule; undefined when it may (or asks for none).
 */
export function instanceProfileRefusal(
  cfg: Pick<AwsProviderConfig, 'instanceProfiles'>,
  namespace: string | undefined,
  annotations: Record<string, string> | undefined,
): string | undefined {
  return annotatedIdentityRefusal(
    {
      annotation: ANNOTATIONS.instanceProfile,
      noun: 'instance profile',
      setting: 'provider.instanceProfiles.allowed',
      fallback: 'instanceProfile',
      rules: cfg.instanceProfiles.allowed.map((r) => ({ namespaces: r.namespaces, identities: r.profiles })),
    },
    namespace,
    annotations,
  );
}
