// The cello.io/gce-service-account annotation, allowed per namespace. On Cello the VM is the
// pod, so the VM's service account is the pod's Google identity: the choice belongs to the
// operator (provider.serviceAccounts.allowed), not to whoever may create a pod.
import { ANNOTATIONS, type GceProviderConfig } from './config.js';

const matches = (list: string[], v: string) => list.includes('*') || list.includes(v);

/**
 * Why a pod in `namespace` may not run as the service account its annotations ask for, naming
 * the rule; undefined when it may (or asks for none).
 */
export function serviceAccountRefusal(
  cfg: Pick<GceProviderConfig, 'serviceAccounts'>,
  namespace: string | undefined,
  annotations: Record<string, string> | undefined,
): string | undefined {
  const email = annotations?.[ANNOTATIONS.serviceAccount];
  if (email === undefined) return undefined;
  const where = namespace ? `namespace "${namespace}"` : 'a cell without a pod';
  const rules = cfg.serviceAccounts.allowed;
  if (namespace && rules.some((r) => matches(r.namespaces, namespace) && matches(r.emails, email))) return undefined;
  return `annotation ${ANNOTATIONS.serviceAccount}: service account "${email}" is not allowed in ${where}: ${
    rules.length ? 'no rule of provider.serviceAccounts.allowed lists both' : 'provider.serviceAccounts.allowed is empty, so pods keep the configured serviceAccount'
  }`;
}
