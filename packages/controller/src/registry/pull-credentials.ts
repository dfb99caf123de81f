// A pod's imagePullSecrets as what its cell receives: for each of the pod's images, the
// credential the kubelet's keyring would try first, and nothing for registries the pod does not
// pull from. The pull secrets themselves stay with the controller unless the pod also mounts
// or reads them, so a cell never holds credentials its pod's images do not need.
import { isDockerConfigType, parseDockerConfigSecret } from '@cello/proto';
import type { PodSpec, RegistryCredential, SecretData } from '@cello/proto/cell';
import { DockerKeyring, imageRepository } from './keyring.js';

export interface PodPullCredentials {
  /** One per image registry (or repository, for a path-scoped entry) the pod pulls from with credentials. */
  credentials: RegistryCredential[];
  /** Named pull secrets that cannot be used (missing, or not a docker config): the pull is tried anyway, as the kubelet does. */
  unusable: { name: string; why: string }[];
}

/** Secrets the pod's containers read (env, envFrom) or mount (secret and projected volumes). */
export function secretsUsedByPod(spec: PodSpec): Set<string> {
  const used = new Set<string>();
  for (const c of [...spec.initContainers, ...spec.containers]) {
    for (const e of c.env) if (e.valueFrom?.source?.$case === 'secretKeyRef') used.add(e.valueFrom.source.value.name);
    for (const e of c.envFrom) if (e.source?.$case === 'secretRef') used.add(e.source.value.name);
  }
  for (const v of spec.volumes) {
    if (v.source?.$case === 'secret') used.add(v.source.value.secretName);
    if (v.source?.$case === 'projected') for (const s of v.source.value.sources) if (s.source?.$case === 'secret') used.add(s.source.value.secretName);
  }
  return used;
}

/** The pod's images, init containers first. */
export function podImages(spec: PodSpec): string[] {
  return [...new Set([...spec.initContainers, ...spec.containers].map((c) => c.image).filter((i) => i))];
}

/**
 * The credentials the pod's images are pulled with, from its imagePullSecrets (looked up in
 * `secrets`, the Secrets applied with it) and any `extra` entries (e.g. ECR tokens).
 */
export function podPullCredentials(spec: PodSpec, secrets: Readonly<Record<string, SecretData>>, extra: DockerKeyring[] = []): PodPullCredentials {
  const unusable: PodPullCredentials['unusable'] = [];
  const keyring = new DockerKeyring();
  for (const name of spec.imagePullSecrets) {
    const s = secrets[name];
    if (!s) unusable.push({ name, why: 'not found' });
    else if (!isDockerConfigType(s.type)) unusable.push({ name, why: `type ${JSON.stringify(s.type || 'Opaque')} holds no registry credentials` });
    else {
      try {
        keyring.add(parseDockerConfigSecret(name, s.type, s.data));
      } catch (err) {
        unusable.push({ name, why: (err as Error).message }); // refused at apply; kept safe for records written before
      }
    }
  }
  const credentials = new Map<string, RegistryCredential>();
  for (const image of podImages(spec)) {
    for (const kr of [keyring, ...extra]) {
      const hit = kr.lookup(image)[0];
      if (!hit) continue;
      const repo = imageRepository(image);
      // A path-scoped entry reaches the cell for that repository only; the agent takes the longest match.
      const registry = hit.scoped ? `${repo.host}/${repo.path}` : repo.host;
      if (!credentials.has(registry)) credentials.set(registry, { registry, username: hit.username, password: hit.password, identityToken: hit.identityToken });
      break;
    }
  }
  return { credentials: [...credentials.values()], unusable };
}
