// The cello.io/aws-instance-profile annotation, allowed per namespace. On Cello the instance is
// the pod, so the instance profile is the pod's AWS identity: the choice belongs to the
// operator (provider.instanceProfiles.allowed), not to whoever may create a pod.
import { ANNOTATIONS, type AwsProviderConfig } from './config.js';

const matches = (list: string[], v: string) => list.includes('*') || list.includes(v);

/**
 * Why a pod in `namespace` may not use the instance profile its annotations ask for, naming the
 * rule; undefined when it may (or asks for none).
 */
export function instanceProfileRefusal(
  cfg: Pick<AwsProviderConfig, 'instanceProfiles'>,
  namespace: string | undefined,
  annotations: Record<string, string> | undefined,
): string | undefined {
  const profile = annotations?.[ANNOTATIONS.instanceProfile];
  if (profile === undefined) return undefined;
  const where = namespace ? `namespace "${namespace}"` : 'a cell without a pod';
  const rules = cfg.instanceProfiles.allowed;
  if (namespace && rules.some((r) => matches(r.namespaces, namespace) && matches(r.profiles, profile))) return undefined;
  return `annotation ${ANNOTATIONS.instanceProfile}: instance profile "${profile}" is not allowed in ${where}: ${
    rules.length ? `no rule of provider.instanceProfiles.allowed lists both` : 'provider.instanceProfiles.allowed is empty, so pods keep the configured instanceProfile'
  }`;
}
