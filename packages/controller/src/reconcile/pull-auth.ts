// A pod's registry credentials, in the two places the controller needs them: the ApplyPod its
// cell gets (registry/pull-credentials.ts decides which credential each image takes), and the
// platform reads of scheduling, which must see the same private images the cell will pull.
import { PodSpec, SecretData, type RegistryCredential } from '@cello/proto/cell';
import type { RegistryAuth } from '@cello/image-puller';
import { podKey, splitKey, type PodRecord } from '../cells/schema.js';
import { readPodSecrets, type PodRecordWithData } from '../cells/pod-secrets.js';
import { podImages, podPullCredentials, type PodPullCredentials } from '../registry/pull-credentials.js';
import type { RegistryCredentials } from '../selection/image-platforms.js';
import type { ReconcileContext } from './context.js';

export interface PodPull {
  pull: PodPullCredentials;
  /** The pod's Secrets, opened. */
  secrets: Record<string, SecretData>;
}

export async function podPull(ctx: ReconcileContext, key: string, rec: PodRecord, spec: PodSpec | undefined): Promise<PodPull> {
  const secrets = Object.fromEntries(
    Object.entries(readPodSecrets(rec as PodRecordWithData, podKey(...splitKey(key)), ctx.o.secretBox)).map(([k, v]) => [k, SecretData.fromJSON(v)]),
  );
  const s = spec ?? PodSpec.fromPartial({});
  const pull = podPullCredentials(s, secrets, (await ctx.o.registryKeyrings?.(podImages(s))) ?? []);
  return { pull, secrets };
}

/** The credentials by registry host, for a reader that asks by host. */
export function authByRegistry(credentials: readonly RegistryCredential[]): RegistryCredentials {
  return (registry: string): RegistryAuth | undefined => {
    // A path-scoped credential (host/repo) is the pod's for that repository on the host.
    const c = credentials.find((x) => x.registry === registry) ?? credentials.find((x) => x.registry.startsWith(`${registry}/`));
    if (!c) return undefined;
    return c.identityToken ? { identityToken: c.identityToken } : { username: c.username, password: c.password };
  };
}
