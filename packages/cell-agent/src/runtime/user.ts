// Resolves a unit's user and groups the way the kubelet and containerd do: the image's USER
// (name or number, optionally ":group"), overridden by runAsUser/runAsGroup; names looked up in
// the image's own /etc/passwd and /etc/group; supplementary groups from /etc/group plus the
// pod's supplementalGroups and fsGroup.
import { existsSync, readFileSync } from 'node:fs';
import { resolveInRoot } from './safe-path.js';
import { CelloError } from '@cello/proto';

export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
  /** The user's name in the image, when it has one. */
  name?: string;
}

/** A user or group the pod names that the image cannot resolve. */
export class UserError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}
interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/**
 * Reads a file of the image from its layer dirs (topmost first), without mounting them: the
 * first layer that has it (or whites it out) decides. Symlinks resolve within each layer.
 */
export function readImageFile(layers: string[], path: string): string {
  const base = path.split('/').pop()!;
  const dir = path.slice(0, path.length - base.length);
  for (const layer of [...layers].reverse()) {
    try {
      return readFileSync(resolveInRoot(layer, path), 'utf8');
    } catch {
      if (existsSync(resolveInRoot(layer, `${dir}.wh.${base}`))) return '';
    }
  }
  return '';
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    out.push({ name: f[0]!, uid, gid, home: f[5] || '/' });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || line.startsWith('#')) continue;
    const gid = Number(f[2]);
    if (!Number.isInteger(gid)) continue;
    out.push({ name: f[0]!, gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

const isNum = (s: string) => /^\d+$/.test(s);

export function resolveUser(opts: {
  /** The image's layer dirs, bottom first (or one rootfs directory). */
  layers: string[];
  imageUser: string;
  runAsUser?: number | undefined;
  runAsGroup?: number | undefined;
  /** A user named by the pod (cello-cri's run_as_username), looked up in the image's /etc/passwd; runAsUser wins. */
  runAsUsername?: string | undefined;
  supplementalGroups?: number[];
  fsGroup?: number | undefined;
  /** supplementalGroupsPolicy Strict: not the groups the image's /etc/group gives the user. */
  strictGroups?: boolean;
}): ResolvedUser {
  const passwd = parsePasswd(readImageFile(opts.layers, '/etc/passwd'));
  const groups = parseGroup(readImageFile(opts.layers, '/etc/group'));
  const [userPart = '', groupPart] = (opts.imageUser || '').split(':');
  let uid = 0;
  let gid: number | undefined;
  let entry: PasswdEntry | undefined;
  if (opts.runAsUser !== undefined) {
    uid = opts.runAsUser;
    entry = passwd.find((p) => p.uid === uid);
  } else if (opts.runAsUsername) {
    entry = passwd.find((p) => p.name === opts.runAsUsername);
    if (!entry)
      throw new UserError(
        `securityContext.cri.runAsUsername (the CRI's run_as_username): unable to find user ${opts.runAsUsername}: no matching entries in the image's /etc/passwd`,
      );
    uid = entry.uid;
  } else if (userPart === '') {
    uid = 0;
    entry = passwd.find((p) => p.uid === 0);
  } else if (isNum(userPart)) {
    uid = Number(userPart);
    entry = passwd.find((p) => p.uid === uid);
  } else {
    entry = passwd.find((p) => p.name === userPart);
    if (!entry) throw new UserError(`unable to find user ${userPart}: no matching entries in the image's /etc/passwd`);
    uid = entry.uid;
  }
  if (opts.runAsGroup !== undefined) gid = opts.runAsGroup;
  else if (groupPart !== undefined && groupPart !== '' && opts.runAsUser === undefined && !opts.runAsUsername) {
    if (isNum(groupPart)) gid = Number(groupPart);
    else {
      const g = groups.find((x) => x.name === groupPart);
      if (!g) throw new UserError(`unable to find group ${groupPart}: no matching entries in the image's /etc/group`);
      gid = g.gid;
    }
  }
  if (gid === undefined) gid = entry?.gid ?? 0;
  const extra = new Set<number>();
  if (entry && !opts.strictGroups) for (const g of groups) if (g.members.includes(entry.name) && g.gid !== gid) extra.add(g.gid);
  for (const g of opts.supplementalGroups ?? []) extra.add(g);
  if (opts.fsGroup !== undefined) extra.add(opts.fsGroup);
  extra.delete(gid);
  return {
    uid,
    gid,
    additionalGids: [...extra].sort((a, b) => a - b),
    home: entry?.home ?? '/',
    ...(entry ? { name: entry.name } : {}),
  };
}
