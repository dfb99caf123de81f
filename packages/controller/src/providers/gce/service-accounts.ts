// The cello.io/gce-service-account annotation, allowed per namespace
// (provider.serviceAccounts.allowed): the VM's service account is the pod's Google identity.
import { annotatedIdentityRefusal } from '../annotated-identity.js';
import { ANNOTATIONS, type GceProviderConfig } from './config.js';

/**
 * Why a pod in `namespace` may not run as the service account its annotations ask for, naming
 * the rule; undefined when it may (or asks for none).
 */
export function serviceAccountRefusal(
  cfg: Pick<GceProviderConfig, 'serviceAccounts'>,
  namespace: string | undefined,
  annotations: Record<string, string> | undefined,
): string | undefined {
  return annotatedIdentityRefusal(
    {
      annotation: ANNOTATIONS.serviceAccount,
      noun: 'service account',
      setting: 'provider.serviceAccounts.allowed',
      fallback: 'serviceAccount',
      rules: cfg.serviceAccounts.allowed.map((r) => ({ namespaces: r.namespaces, identities: r.emails })),
    },
    namespace,
    annotations,
  );
}
