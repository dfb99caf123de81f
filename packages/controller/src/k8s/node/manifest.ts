// Turns a Pod from the API server into what the controller core runs: the pod itself (with the
// Service environment a kubelet injects: KUBERNETES_SERVICE_* and the namespace's service links), plus every Secret and ConfigMap it
// references, read from the API; projected service-account tokens are requested through the
// TokenRequest API and sent as a secret the cell mounts at the same path.
import { stringify } from 'yaml';
import type { KubeRest } from '../client/rest.js';
import { isNotFound } from '../client/rest.js';
import { CelloError } from '../../errors.js';
import { podServiceEnv, type EnvVar, type ServiceView } from './service-env.js';

/** The minimal view of a v1 Pod this module reads. */
export interface KPod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    creationTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    deletionTimestamp?: string;
    deletionGracePeriodSeconds?: number;
    resourceVersion?: string;
  };
  spec: {
    nodeName?: string;
    serviceAccountName?: string;
    containers: KContainer[];
    initContainers?: KContainer[];
    ephemeralContainers?: KContainer[];
    volumes?: KVolume[];
    imagePullSecrets?: { name: string }[];
    terminationGracePeriodSeconds?: number;
    [k: string]: unknown;
  };
  status?: { phase?: string; conditions?: { type: string; status: string }[]; [k: string]: unknown };
}

interface KContainer {
  name: string;
  image?: string;
  env?: {
    name: string;
    value?: string;
    valueFrom?: { secretKeyRef?: { name: string; optional?: boolean }; configMapKeyRef?: { name: string; optional?: boolean }; fieldRef?: { fieldPath: string } };
  }[];
  envFrom?: { secretRef?: { name: string; optional?: boolean }; configMapRef?: { name: string; optional?: boolean } }[];
  [k: string]: unknown;
}

interface KVolume {
  name: string;
  secret?: { secretName?: string; optional?: boolean };
  configMap?: { name?: string; optional?: boolean };
  projected?: {
    sources: {
      secret?: { name?: string; optional?: boolean };
      configMap?: { name?: string; optional?: boolean };
      serviceAccountToken?: { audience?: string; expirationSeconds?: number; path: string };
      [k: string]: unknown;
    }[];
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export const LABEL_NODE = 'cello.dev/k8s-node';
export const ANNOTATION_UID = 'cello.dev/k8s-uid';

export class MissingReferenceError extends CelloError {
  constructor(
    readonly kind: string,
    readonly refName: string,
    namespace: string,
  ) {
    super('NotFound', `${kind.toLowerCase()} "${refName}" not found in namespace ${namespace}`);
  }
}

export interface ManifestOptions {
  nodeName: string;
  /** Where pods reach the API server (KUBERNETES_SERVICE_HOST/PORT) when configured: overrides the Service. */
  apiServer?: { host: string; port: number };
  /** The cluster's Services: KUBERNETES_SERVICE_* name the `default/kubernetes` Service. */
  services?: ServiceView;
  /** The API server's own address, for a cluster without a `default/kubernetes` Service. */
  fallbackApiServer?: { host: string; port: number };
  /** Audience of projected tokens that name none (the API server's issuer). */
  defaultAudiences?: string[];
}

/** A projected service-account token this node requested, and when it must be requested again. */
export interface IssuedToken {
  token: string;
  issuedAt: number;
  expiresAt: number;
  refreshAt: number;
}

/** The kubelet's rule: refresh once `ratio` (0.8) of the lifetime has passed, and at least daily. */
export const MAX_TOKEN_AGE_MS = 24 * 3600_000;
export function tokenRefreshAt(issuedAt: number, expiresAt: number, ratio: number): number {
  return issuedAt + Math.min(Math.max(0, expiresAt - issuedAt) * ratio, MAX_TOKEN_AGE_MS);
}

export interface TokenOptions {
  /** Tokens issued earlier for this pod, by source (see tokenKey); reused until their refreshAt. */
  cache?: Map<string, IssuedToken>;
  /** Fraction of a token's lifetime after which it is refreshed (kubelet: 0.8). */
  refreshRatio?: number;
  now?: () => number;
  /** The Service env this pod got first: kept for its life, as a container's env is fixed once made. */
  serviceEnv?: EnvVar[];
}

export interface BuiltManifest {
  manifest: string;
  /** Every token the manifest carries, by source; pass as `cache` next time. */
  tokens: Map<string, IssuedToken>;
  /** When the earliest token is due for refresh (Infinity: no tokens). */
  nextTokenRefreshAt: number;
  /** The Service env the containers got; pass as `serviceEnv` next time. */
  serviceEnv: EnvVar[];
}

/** Builds the multi-document manifest (Pod, then Secrets and ConfigMaps) for ApplyPod. */
export async function buildManifest(rest: KubeRest, pod: KPod, o: ManifestOptions): Promise<string> {
  return (await buildPodManifest(rest, pod, o)).manifest;
}

/**
 * The manifest, plus the projected tokens it carries: a token from `t.cache` is reused until
 * its refresh time (so a manifest built again for the same data is byte-identical), else a new
 * one is requested through the TokenRequest API, bound to the pod.
 */
export async function buildPodManifest(rest: KubeRest, pod: KPod, o: ManifestOptions, t: TokenOptions = {}): Promise<BuiltManifest> {
  const now = t.now ?? Date.now;
  const ratio = t.refreshRatio ?? 0.8;
  const tokens = new Map<string, IssuedToken>();
  const ns = pod.metadata.namespace;
  // First, so a pod waiting for the Services to be listed costs no token requests.
  const env =
    t.serviceEnv ??
    podServiceEnv({
      namespace: ns,
      enableServiceLinks: pod.spec.enableServiceLinks as boolean | undefined,
      ...(o.apiServer ? { configured: o.apiServer } : {}),
      ...(o.services ? { services: o.services } : {}),
      ...(o.fallbackApiServer ? { fallback: o.fallbackApiServer } : {}),
    });
  const secrets = new Map<string, boolean>(); // name -> optional
  const configMaps = new Map<string, boolean>();
  const want = (m: Map<string, boolean>, name: string | undefined, optional?: boolean) => {
    if (!name) return;
    m.set(name, (m.get(name) ?? true) && !!optional);
  };
  const containers = [...pod.spec.containers, ...(pod.spec.initContainers ?? []), ...(pod.spec.ephemeralContainers ?? [])];
  for (const c of containers) {
    for (const e of c.env ?? []) {
      want(secrets, e.valueFrom?.secretKeyRef?.name, e.valueFrom?.secretKeyRef?.optional);
      want(configMaps, e.valueFrom?.configMapKeyRef?.name, e.valueFrom?.configMapKeyRef?.optional);
    }
    for (const e of c.envFrom ?? []) {
      want(secrets, e.secretRef?.name, e.secretRef?.optional);
      want(configMaps, e.configMapRef?.name, e.configMapRef?.optional);
    }
  }
  // kubectl debug's ephemeral containers (added through the /ephemeralcontainers subresource) go
  // to the cell with the rest: a new generation whose other units are unchanged.
  const spec = structuredClone(pod.spec);
  // A pod that names no pull secrets uses its ServiceAccount's, as the ServiceAccount
  // admission plugin would have set them (it may be off, or the account edited since).
  if (!spec.imagePullSecrets?.length) {
    const fromAccount = await serviceAccountPullSecrets(rest, ns, pod.spec.serviceAccountName || 'default');
    if (fromAccount.length > 0) spec.imagePullSecrets = fromAccount;
  }
  // Optional: a missing pull secret is reported by the core and the pull is tried anyway, as the kubelet does.
  for (const s of spec.imagePullSecrets ?? []) want(secrets, s.name, true);
  const tokenSecrets: Record<string, unknown>[] = [];
  for (const v of spec.volumes ?? []) {
    if (v.secret) want(secrets, v.secret.secretName, v.secret.optional);
    if (v.configMap) want(configMaps, v.configMap.name, v.configMap.optional);
    for (const [i, src] of (v.projected?.sources ?? []).entries()) {
      if (src.secret) want(secrets, src.secret.name, src.secret.optional);
      if (src.configMap) want(configMaps, src.configMap.name, src.configMap.optional);
      if (src.serviceAccountToken) {
        const sat = src.serviceAccountToken;
        const sa = pod.spec.serviceAccountName || 'default';
        const audiences = sat.audience ? [sat.audience] : (o.defaultAudiences ?? []);
        const expirationSeconds = sat.expirationSeconds ?? 3607;
        // A changed source (audience, lifetime, account) is a different token.
        const key = tokenKey(v.name, i, sa, audiences, expirationSeconds);
        let issued = t.cache?.get(key);
        if (!issued || now() >= issued.refreshAt) {
          const issuedAt = now();
          const tr = await rest.post<{ status: { token: string; expirationTimestamp: string } }>(`/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`, {
            apiVersion: 'authentication.k8s.io/v1',
            kind: 'TokenRequest',
            spec: { audiences, expirationSeconds, boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod.metadata.name, uid: pod.metadata.uid } },
          });
          const expiresAt = Date.parse(tr.status.expirationTimestamp);
          issued = {
            token: tr.status.token,
            issuedAt,
            expiresAt,
            refreshAt: tokenRefreshAt(issuedAt, Number.isFinite(expiresAt) ? expiresAt : issuedAt + expirationSeconds * 1000, ratio),
          };
        }
        tokens.set(key, issued);
        const name = `cello-sa-token-${v.name}-${i}`;
        tokenSecrets.push({ apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: ns }, stringData: { token: issued.token } });
        v.projected!.sources[i] = { secret: { name, items: [{ key: 'token', path: sat.path }] } } as never;
      }
    }
  }
  // spec.nodeName is the virtual node's name, which the cell does not know: written as a value.
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
    if (c.env) c.env = c.env.map((e) => (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName' ? { name: e.name, value: pod.spec.nodeName ?? o.nodeName } : e));
  }
  if (env.length > 0) {
    for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
      const own = new Set((c.env ?? []).map((e) => e.name));
      c.env = [...env.filter((e) => !own.has(e.name)), ...(c.env ?? [])];
    }
  }
  const docs: unknown[] = [
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: pod.metadata.name,
        namespace: ns,
        labels: { ...(pod.metadata.labels ?? {}), [LABEL_NODE]: o.nodeName },
        annotations: { ...(pod.metadata.annotations ?? {}), [ANNOTATION_UID]: pod.metadata.uid },
      },
      spec,
    },
  ];
  const fetchAll = async (kind: 'Secret' | 'ConfigMap', m: Map<string, boolean>) => {
    for (const [name, optional] of m) {
      try {
        const o2 = await rest.get<{ data?: Record<string, string>; binaryData?: Record<string, string>; type?: string }>(
          `/api/v1/namespaces/${ns}/${kind === 'Secret' ? 'secrets' : 'configmaps'}/${name}`,
        );
        docs.push({
          apiVersion: 'v1',
          kind,
          metadata: { name, namespace: ns },
          ...(o2.type ? { type: o2.type } : {}),
          ...(o2.data ? { data: o2.data } : {}),
          ...(o2.binaryData ? { binaryData: o2.binaryData } : {}),
        });
      } catch (err) {
        if (!isNotFound(err)) throw err;
        if (!optional) throw new MissingReferenceError(kind, name, ns);
      }
    }
  };
  await fetchAll('Secret', secrets);
  await fetchAll('ConfigMap', configMaps);
  docs.push(...tokenSecrets);
  return {
    // Written as YAML 1.1, as the core reads it: else a string like "yes", "on" or "2026-01-01"
    // (a label, an env value) goes out plain and comes back a boolean or a date.
    manifest: docs.map((d) => stringify(d, { version: '1.1' })).join('---\n'),
    tokens,
    nextTokenRefreshAt: Math.min(Infinity, ...[...tokens.values()].map((x) => x.refreshAt)),
    serviceEnv: env,
  };
}

async function serviceAccountPullSecrets(rest: KubeRest, ns: string, name: string): Promise<{ name: string }[]> {
  try {
    const sa = await rest.get<{ imagePullSecrets?: { name?: string }[] }>(`/api/v1/namespaces/${ns}/serviceaccounts/${name}`);
    return (sa.imagePullSecrets ?? []).filter((s): s is { name: string } => !!s.name).map((s) => ({ name: s.name }));
  } catch (err) {
    if (isNotFound(err)) return [];
    throw err;
  }
}

function tokenKey(volume: string, index: number, sa: string, audiences: string[], expirationSeconds: number): string {
  return JSON.stringify([volume, index, sa, audiences, expirationSeconds]);
}
