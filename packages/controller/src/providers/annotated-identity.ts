// A cloud identity a pod asks for by annotation (an AWS instance profile, a GCE service account),
// allowed per namespace. On Cello the instance is the pod, so the instance's identity is the
// pod's: the choice belongs to the operator's allow-list, not to whoever may create a pod.

const matches = (list: string[], v: string) => list.includes('*') || list.includes(v);

export interface AnnotatedIdentity {
  /** The annotation naming the identity, e.g. cello.io/aws-instance-profile. */
  annotation: string;
  /** What the identity is called in messages: "instance profile", "service account". */
  noun: string;
  /** The configuration path of the allow-list, e.g. provider.instanceProfiles.allowed. */
  setting: string;
  /** The provider's own default a pod keeps without a rule, e.g. instanceProfile. */
  fallback: string;
  /** Each rule: the namespaces it covers and the identities it allows there ('*' for any). */
  rules: { namespaces: string[]; identities: string[] }[];
}

/**
 * Why a pod in `namespace` may not use the identity its annotations ask for, naming the rule;
 * undefined when it may (or asks for none).
 */
export function annotatedIdentityRefusal(o: AnnotatedIdentity, namespace: string | undefined, annotations: Record<string, string> | undefined): string | undefined {
  const value = annotations?.[o.annotation];
  if (value === undefined) return undefined;
  const where = namespace ? `namespace "${namespace}"` : 'a cell without a pod';
  if (namespace && o.rules.some((r) => matches(r.namespaces, namespace) && matches(r.identities, value))) return undefined;
  return `annotation ${o.annotation}: ${o.noun} "${value}" is not allowed in ${where}: ${
    o.rules.length ? `no rule of ${o.setting} lists both` : `${o.setting} is empty, so pods keep the configured ${o.fallback}`
  }`;
}
