// Which registry credentials an image may be pulled with, by the kubelet's rules
// (pkg/credentialprovider/keyring.go): an `auths` key is a host[:port] with an optional path,
// written bare or as a URL (a trailing /v1/ or /v2/ means the host); its host may hold `*`
// globs per dot-separated label (`*.example.com` matches `a.example.com`, not
// `a.b.example.com`); the port must be equal; its path must be a prefix of the image's path.
// Every matching key applies, the most specific (reverse-sorted) first; Docker Hub images also
// take the `index.docker.io` entry Docker writes for `docker login`.
import type { DockerAuthEntry } from '@cello/proto';

export interface KeyringCredential {
  username: string;
  password: string;
  identityToken: string;
  /** Its key names a repository path, not only a host: it applies to that path's images alone. */
  scoped: boolean;
}

interface Key {
  host: string;
  port: string;
  path: string;
}

const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_KEY = 'index.docker.io';

/** An image's registry host and repository path, as Docker names them: `busybox` is docker.io/library/busybox. */
export function imageRepository(image: string): { host: string; path: string } {
  let rest = image.trim();
  const at = rest.indexOf('@');
  if (at >= 0) rest = rest.slice(0, at);
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) rest = rest.slice(0, colon);
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    const host = first === 'index.docker.io' || first === 'registry-1.docker.io' ? DOCKER_HUB : first;
    const path = rest.slice(slash + 1);
    return { host, path: host === DOCKER_HUB && !path.includes('/') ? `library/${path}` : path };
  }
  return { host: DOCKER_HUB, path: rest.includes('/') ? rest : `library/${rest}` };
}

function splitHostPort(hostPort: string): { host: string; port: string } {
  const m = /^(.*?)(?::(\d+))?$/.exec(hostPort)!;
  return { host: m[1]!.toLowerCase(), port: m[2] ?? '' };
}

/** The index key of an `auths` entry, as the kubelet's Add: scheme dropped, /v1/ and /v2/ mean the host. */
function keyOf(server: string): string | undefined {
  let url: URL;
  try {
    url = new URL(/^https?:\/\//.test(server) ? server : `https://${server}`);
  } catch {
    return undefined; // the kubelet logs and ignores such an entry
  }
  let path = url.pathname;
  if (path.startsWith('/v2/') || path.startsWith('/v1/')) path = path.slice(3);
  // URL lowercases and punycodes the host; a glob's `*` survives in its label.
  const host = decodeURIComponent(url.host);
  return path.length > 0 && path !== '/' ? host + path : host;
}

function parseKey(key: string): Key {
  const slash = key.indexOf('/');
  const hostPort = slash >= 0 ? key.slice(0, slash) : key;
  return { ...splitHostPort(hostPort), path: slash >= 0 ? key.slice(slash) : '' };
}

/** filepath.Match for one host label: `*` is any run of characters, `?` one. */
function labelMatches(glob: string, label: string): boolean {
  if (!glob.includes('*') && !glob.includes('?')) return glob === label;
  const re = new RegExp(
    `^${glob
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replaceAll('*', '.*')
      .replaceAll('?', '.')}$`,
  );
  return re.test(label);
}

function keyMatches(key: Key, image: { host: string; port: string; path: string }): boolean {
  if (key.port !== image.port) return false;
  const globs = key.host.split('.');
  const labels = image.host.split('.');
  if (globs.length !== labels.length) return false;
  if (!image.path.startsWith(key.path)) return false;
  return globs.every((g, i) => labelMatches(g, labels[i]!));
}

export class DockerKeyring {
  private readonly creds = new Map<string, KeyringCredential[]>();

  add(entries: readonly DockerAuthEntry[]): void {
    for (const e of entries) {
      const key = keyOf(e.server);
      if (key === undefined) continue;
      const list = this.creds.get(key) ?? [];
      list.push({ username: e.username, password: e.password, identityToken: e.identityToken, scoped: parseKey(key).path !== '' });
      this.creds.set(key, list);
    }
  }

  /** Credentials for an image, the most specific key first (none: an anonymous pull). */
  lookup(image: string): KeyringCredential[] {
    const repo = imageRepository(image);
    const { host, port } = splitHostPort(repo.host);
    const target = { host, port, path: `/${repo.path}` };
    // Reverse-sorted, as the kubelet's index: "quay.io/coreos" before "quay.io".
    const keys = [...this.creds.keys()].sort().reverse();
    const out = keys.filter((k) => keyMatches(parseKey(k), target)).flatMap((k) => this.creds.get(k)!);
    if (out.length === 0 && repo.host === DOCKER_HUB) return [...(this.creds.get(DOCKER_HUB_KEY) ?? [])];
    return out;
  }

  get size(): number {
    return this.creds.size;
  }
}
