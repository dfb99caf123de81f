import type { ConfigMapData, Pod, SecretData } from '../cell.js';
import { convertConfigMap, convertPod, convertSecret, parseDocuments } from './convert.js';
import { ManifestError } from './errors.js';

export { ManifestError } from './errors.js';
export { DOCKER_CFG_TYPE, DOCKER_CONFIG_JSON_TYPE, isDockerConfigType, parseDockerConfigSecret, type DockerAuthEntry } from './docker-config.js';

export type ManifestObject =
  { kind: 'Pod'; pod: Pod } | { kind: 'Secret'; name: string; namespace: string; data: SecretData } | { kind: 'ConfigMap'; name: string; namespace: string; data: ConfigMapData };

/**
 * Every object in a manifest file (YAML with `---` separators, a JSON object, or a v1 List):
 * Pods, Secrets and ConfigMaps. Anything else is refused, naming the document and its kind.
 */
export function readManifests(input: string | object, defaults: { namespace?: string } = {}): ManifestObject[] {
  const docs = typeof input === 'string' ? parseDocuments(input) : [input];
  const ns = defaults.namespace ?? 'default';
  return docs.map((doc, i) => {
    try {
      if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ManifestError('', 'expected an object with apiVersion and kind');
      const kind = (doc as { kind?: unknown }).kind;
      switch (kind) {
        case 'Pod':
          return { kind, pod: convertPod(doc, { namespace: ns }) };
        case 'Secret': {
          const s = convertSecret(doc);
          return { kind, name: s.name, namespace: s.namespace ?? ns, data: s.data };
        }
        case 'ConfigMap': {
          const c = convertConfigMap(doc);
          return { kind, name: c.name, namespace: c.namespace ?? ns, data: c.data };
        }
        case undefined:
          throw new ManifestError('kind', 'is required');
        default:
          throw new ManifestError('kind', `${JSON.stringify(kind)} is not supported: Cello accepts v1 Pod, Secret and ConfigMap`);
      }
    } catch (err) {
      if (err instanceof ManifestError && docs.length > 1 && err.document === undefined) {
        throw new ManifestError(err.field, err.problem, i);
      }
      throw err;
    }
  });
}

export interface PodManifest {
  pod: Pod;
  /** Secrets and ConfigMaps given in the same file, by name, for the pod's volumes and env. */
  secrets: Record<string, SecretData>;
  configMaps: Record<string, ConfigMapData>;
}

/** One Pod (plus any Secrets and ConfigMaps beside it in the same file). */
export function podFromManifest(input: string | object, defaults: { namespace?: string } = {}): PodManifest {
  const objs = readManifests(input, defaults);
  const pods = objs.filter((o) => o.kind === 'Pod');
  if (pods.length !== 1) throw new ManifestError('kind', pods.length === 0 ? 'no Pod in the manifest' : `${pods.length} Pods in one manifest; give one`);
  const out: PodManifest = { pod: pods[0]!.pod, secrets: {}, configMaps: {} };
  for (const o of objs) {
    if (o.kind === 'Secret') out.secrets[o.name] = o.data;
    else if (o.kind === 'ConfigMap') out.configMaps[o.name] = o.data;
  }
  return out;
}

export { kubePod, kubePodSpec } from './to-kube.js';
