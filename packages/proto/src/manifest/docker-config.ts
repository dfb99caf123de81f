// Registry credentials as Kubernetes keeps them in Secrets: `kubernetes.io/dockerconfigjson`
// (Docker's config.json, `{"auths": {...}}`, under `.dockerconfigjson`) and the legacy
// `kubernetes.io/dockercfg` (the bare `auths` map under `.dockercfg`). One parser, used when a
// Secret is applied (so a malformed one is refused naming its field) and when credentials are
// chosen for a pod's images.
import { z } from 'zod';
import { ManifestError, fieldPath } from './errors.js';

export const DOCKER_CONFIG_JSON_TYPE = 'kubernetes.io/dockerconfigjson';
export const DOCKER_CFG_TYPE = 'kubernetes.io/dockercfg';
const KEY_OF: Record<string, string> = { [DOCKER_CONFIG_JSON_TYPE]: '.dockerconfigjson', [DOCKER_CFG_TYPE]: '.dockercfg' };

/** One `auths` entry: the server as written (host, host:port, host/path, a URL, or a `*.` wildcard). */
export interface DockerAuthEntry {
  server: string;
  username: string;
  password: string;
  identityToken: string;
}

// Docker writes more fields (email, serveraddress, credHelpers...): they are not ours to refuse.
const entry = z.looseObject({
  auth: z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  identitytoken: z.string().optional(),
});
const auths = z.record(z.string(), entry);
const configJson = z.looseObject({ auths: auths.optional() });

/** Whether Secrets of this type carry registry credentials. */
export function isDockerConfigType(type: string | undefined): type is string {
  return type !== undefined && type in KEY_OF;
}

/**
 * The registry credentials in a Secret of a docker config type; throws ManifestError naming the
 * Secret and the field (`data[".dockerconfigjson"].auths["host"].auth`) when they are malformed.
 */
export function parseDockerConfigSecret(secretName: string, type: string, data: Readonly<Record<string, Uint8Array>>): DockerAuthEntry[] {
  const key = KEY_OF[type];
  if (!key) throw new ManifestError('type', `Secret "${secretName}": ${JSON.stringify(type)} does not hold registry credentials`);
  const fail = (path: PropertyKey[], problem: string): never => {
    throw new ManifestError(fieldPath(['data', key, ...path]), `${problem} (Secret "${secretName}" of type ${type})`);
  };
  const raw = data[key];
  if (!raw || raw.length === 0) fail([], 'is required');
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(raw!).toString('utf8'));
  } catch (err) {
    fail([], `is not valid JSON: ${(err as Error).message}`);
  }
  const parsed = type === DOCKER_CFG_TYPE ? auths.safeParse(json) : configJson.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    fail(issue.path, issue.message);
  }
  const map = (type === DOCKER_CFG_TYPE ? parsed.data : ((parsed.data as z.infer<typeof configJson>).auths ?? {})) as z.infer<typeof auths>;
  const prefix = type === DOCKER_CFG_TYPE ? [] : ['auths'];
  return Object.entries(map).map(([server, e]) => {
    if (!server.trim()) fail([...prefix, server], 'a registry name is required');
    let username = e.username ?? '';
    let password = e.password ?? '';
    if (e.auth) {
      // "auth" is base64("user:password") and wins over the separate fields, as in the kubelet.
      const decoded = /^[A-Za-z0-9+/]*={0,2}$/.test(e.auth) ? Buffer.from(e.auth, 'base64').toString('utf8') : '';
      const colon = decoded.indexOf(':');
      if (colon < 0) fail([...prefix, server, 'auth'], 'must be base64 of "username:password"');
      username = decoded.slice(0, colon);
      password = decoded.slice(colon + 1);
    }
    return { server, username, password, identityToken: e.identitytoken ?? '' };
  });
}
