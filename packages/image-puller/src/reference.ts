import { PullError } from './errors.js';

export interface Reference {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

const DOCKER_HUB = 'docker.io';
const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]{32,})$/;
const HOST_RE = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;

/**
 * Parses an image reference the way Docker does: a first component is a registry only if it
 * looks like a host (has a dot or a port, or is `localhost`); Docker Hub names get `library/`.
 */
export function parseReference(ref: string): Reference {
  if (typeof ref !== 'string' || ref.length === 0 || ref.length > 4096) {
    throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: empty or too long`);
  }
  let rest = ref.trim();
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    const m = DIGEST_RE.exec(digest);
    if (!m) throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: bad digest ${JSON.stringify(digest)}`);
    if (m[1] !== 'sha256') throw new PullError('unsupported', `image reference ${JSON.stringify(ref)}: digest algorithm ${m[1]} is not supported (only sha256)`);
    if (!/^[a-f0-9]{64}$/.test(m[2]!)) throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: sha256 digest must be 64 lowercase hex characters`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG_RE.test(tag)) throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: bad tag ${JSON.stringify(tag)}`);
  }
  let registry = DOCKER_HUB;
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[')) {
      registry = first;
      repository = rest.slice(slash + 1);
    }
  }
  if (!HOST_RE.test(registry)) throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: bad registry host ${JSON.stringify(registry)}`);
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  if (!REPOSITORY_RE.test(repository) || repository.length > 255) {
    throw new PullError('invalid', `invalid image reference ${JSON.stringify(ref)}: repository ${JSON.stringify(repository)} must be lowercase path components`);
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  const out: Reference = { registry, repository };
  if (tag !== undefined) out.tag = tag;
  if (digest !== undefined) out.digest = digest;
  return out;
}

export function formatReference(r: Reference): string {
  return `${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** Normalised form, e.g. `busybox` -> `docker.io/library/busybox:latest`. */
export function normalizeReference(ref: string): string {
  return formatReference(parseReference(ref));
}
