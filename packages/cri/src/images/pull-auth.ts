// A PullImage request's credentials (CRI AuthConfig: what the kubelet found in the pod's
// imagePullSecrets or its credential providers for this image) as the registry client takes
// them. They are sent to the image's own registry and nowhere else: not to a mirror, not to a
// rewrite target, not to whatever host a server_address names.
import type { Reference, RegistryAuth } from '@cello/image-puller';
import { CelloError } from '@cello/proto';
import type { AuthConfig } from '../gen/runtime/v1/api.js';

function invalid(field: string, message: string): CelloError {
  return new CelloError('InvalidArgument', `auth.${field}: ${message}`);
}

/** `https://index.docker.io/v1/` -> `docker.io`; `reg:5000/v2/` -> `reg:5000`. */
function serverHost(address: string): string {
  let host = address.trim().replace(/^[a-z]+:\/\//i, '');
  host = host.split('/')[0]!.toLowerCase();
  if (host === 'index.docker.io' || host === 'registry-1.docker.io') return 'docker.io';
  return host;
}

function decodeAuth(auth: string): { username: string; password: string } {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(auth)) throw invalid('auth', 'not base64 (expected base64 of "username:password")');
  const text = Buffer.from(auth, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) throw invalid('auth', 'does not decode to "username:password"');
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

/** The credentials for `ref`'s registry, or undefined for an anonymous pull; refusals name the field. */
export function pullCredentials(auth: AuthConfig | undefined, ref: Reference): ((host: string) => RegistryAuth | undefined) | undefined {
  if (!auth) return undefined;
  if (auth.registryToken) {
    throw invalid('registry_token', 'bearer tokens for the registry are not supported by cello-cri: give username/password, auth, or identity_token');
  }
  if (auth.serverAddress && serverHost(auth.serverAddress) !== ref.registry) {
    throw invalid(
      'server_address',
      `${JSON.stringify(auth.serverAddress)} is not the image's registry ${ref.registry}: credentials are only sent to the registry the image is pulled from`,
    );
  }
  let creds: RegistryAuth | undefined;
  if (auth.identityToken) {
    if (auth.username || auth.password || auth.auth) throw invalid('identity_token', 'give either identity_token or username/password (or auth), not both');
    creds = { identityToken: auth.identityToken };
  } else if (auth.auth) {
    const decoded = decodeAuth(auth.auth);
    if ((auth.username && auth.username !== decoded.username) || (auth.password && auth.password !== decoded.password)) {
      throw invalid('auth', 'contradicts username/password: give one of them');
    }
    creds = decoded;
  } else if (auth.username || auth.password) {
    if (!auth.username) throw invalid('username', 'is required with a password');
    creds = { username: auth.username, password: auth.password };
  }
  if (!creds) return undefined;
  const own = ref.registry;
  return (host) => (host === own ? creds : undefined);
}
