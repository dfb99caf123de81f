// Cello identities as SPIFFE IDs, spiffe://<trust domain>/<cell|client|user>/<name>: the one
// parser with which the agent and the controller read a certificate's URI SAN. User names may
// also hold ':' and '@' (Kubernetes-style "system:virtual-node", e-mail addresses); `user` is a
// kind of its own, so a user named "controller" is never the controller.
export type SpiffeKind = 'cell' | 'client' | 'user';

export interface SpiffeId {
  trustDomain: string;
  kind: SpiffeKind;
  /** The cell ID, client name or user name. */
  name: string;
  uri: string;
}

const URI_RE = /^spiffe:\/\/([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?)\/(cell|client|user)\/([^/]+)$/;
const NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$/;
const USER_NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._:@-]{0,126}[A-Za-z0-9])?$/;

/** Whether `name` is a usable name of that kind (a cell ID or client name, or a user name). */
export function isSpiffeName(kind: SpiffeKind, name: string): boolean {
  return (kind === 'user' ? USER_NAME_RE : NAME_RE).test(name);
}

/** The Cello identity a URI names, or undefined if it is not one. */
export function parseSpiffeId(uri: string): SpiffeId | undefined {
  const m = URI_RE.exec(uri);
  if (m === null) return undefined;
  const kind = m[3] as SpiffeKind;
  const name = m[4]!;
  return isSpiffeName(kind, name) ? { trustDomain: m[1]!, kind, name, uri } : undefined;
}
