// The kubelet's standard mounts, mapped onto the pod's cell. A kubelet always passes mounts of
// host files it writes itself, all under its pods directory (`<root>/<pod uid>/`): the pod's
// etc-hosts, each container's termination-log, and its volumes (configMap, secret, projected
// service-account token, downwardAPI, emptyDir). The cell cannot see this node's files, so:
//  - a volume directory or file the kubelet wrote is read here and shipped to the cell as file
//    content (a Secret volume: the cell writes it atomically, and rewrites it when it changes);
//  - an emptyDir is an emptyDir on the cell (shared by the pod's containers there);
//  - etc-hosts is the cell's own /etc/hosts (the cell writes the pod's hostname and IP), with the
//    pod's hostAliases read back from the kubelet's file (hostAliasesOf);
//  - termination-log is the unit's terminationMessagePath; its message is written back to the
//    kubelet's file when the container ends, where the kubelet reads it.
// Anything else, or anything that resolves outside the pod's own directory (a symlink planted in
// it), is refused naming the mount: the shim must never ship other files of this node.
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, realpathSync, statSync, type Stats } from 'node:fs';
import { isIP } from 'node:net';
import { join, normalize, relative, sep } from 'node:path';
import { CelloError } from '@cello/proto';
import type { Mount } from '../gen/runtime/v1/api.js';

export const DEFAULT_PODS_ROOT = '/var/lib/kubelet/pods';
/** What one shipped volume may hold: a Secret's limit in Kubernetes. */
export const MAX_VOLUME_BYTES = 1 << 20;
const MAX_FILES = 1000;

/** How one CRI mount reaches the cell (kept in the container's record). */
export interface MappedMount {
  kind: 'content' | 'emptyDir' | 'hosts' | 'terminationLog';
  hostPath: string;
  containerPath: string;
  readonly: boolean;
  /** The pod volume's name on the cell (content, emptyDir). */
  volume?: string;
  /** content: the host path is a single file, mounted by subPath. */
  file?: boolean;
}

/** One file of a shipped volume: its path in the volume, bytes and mode. */
export interface VolumeFile {
  path: string;
  data: Buffer;
  mode: number;
}

function refuse(field: string, why: string): never {
  throw new CelloError('InvalidArgument', `${field}: ${why}`);
}

const inside = (root: string, p: string) => p === root || p.startsWith(root + sep);

function real(field: string, p: string): string {
  try {
    return realpathSync(p);
  } catch (err) {
    refuse(field, `${JSON.stringify(p)} cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

function volumeName(prefix: string, key: string): string {
  return `${prefix}-${createHash('sha256').update(key).digest('hex').slice(0, 16)}`;
}

/** The pod's own directory under the pods root, resolved (the root itself may be a symlink). */
function podDir(podsRoot: string, podUid: string): string {
  if (!podUid || podUid.includes('/') || podUid === '.' || podUid === '..') refuse('config.metadata.uid', `${JSON.stringify(podUid)} cannot name a directory`);
  let root = podsRoot;
  try {
    root = realpathSync(podsRoot);
  } catch {
    // No pods directory (no kubelet here yet): every path under it fails to resolve, naming the mount.
  }
  return join(root, podUid);
}

/**
 * Maps the container's mounts; refuses (naming `config.mounts[i]`) any it cannot mean. Reads
 * nothing but the paths' identity: content is read when the pod is applied (readVolume).
 */
export function mapMounts(mounts: Mount[], o: { podsRoot: string; podUid: string }): MappedMount[] {
  const out: MappedMount[] = [];
  if (!mounts.length) return out;
  const pod = podDir(o.podsRoot, o.podUid);
  mounts.forEach((m, i) => {
    const field = `config.mounts[${i}]`;
    if (m.image?.image) refuse(`${field}.image`, `image volume ${m.image.image} at ${JSON.stringify(m.containerPath)} is not supported by cello-cri`);
    const what = `host_path ${JSON.stringify(m.hostPath)} at ${JSON.stringify(m.containerPath)}`;
    if (m.propagation !== 0) refuse(`${field}.propagation`, `mount propagation with this node (${what}) cannot reach a pod on its own cell`);
    if (!m.containerPath.startsWith('/')) refuse(`${field}.container_path`, `${JSON.stringify(m.containerPath)} must be an absolute path`);
    if (!m.hostPath.startsWith('/')) refuse(`${field}.host_path`, `${JSON.stringify(m.hostPath)} must be an absolute path`);
    const outside = `${what}: a container runs on its pod's cell, which cannot see this node's files; only the kubelet's own files of this pod (under ${pod}) are shipped to it`;
    const given = normalize(m.hostPath).replace(/\/+$/, '');
    // Both the path as given and where it leads must be the pod's: a symlink planted in the pods
    // directory that leads elsewhere is refused, like a path outside it.
    if (!inside(join(o.podsRoot, o.podUid), given) && !inside(pod, given)) refuse(field, outside);
    const resolved = real(`${field}.host_path`, m.hostPath);
    if (!inside(pod, resolved)) refuse(field, `${what} resolves to ${JSON.stringify(resolved)}, outside this pod's kubelet directory ${pod}; refused`);
    const rel = relative(pod, resolved).split(sep);
    const st = statSync(resolved);
    const base = { hostPath: resolved, containerPath: m.containerPath, readonly: m.readonly };
    if (rel.length === 1 && rel[0] === 'etc-hosts') out.push({ ...base, kind: 'hosts' });
    else if (rel[0] === 'containers' && st.isFile()) out.push({ ...base, kind: 'terminationLog' });
    else if (rel[0] === 'volumes' && rel[1] === 'kubernetes.io~empty-dir' && rel.length === 3 && st.isDirectory())
      out.push({ ...base, kind: 'emptyDir', volume: volumeName('ed', rel[2]!) });
    else if ((rel[0] === 'volumes' || rel[0] === 'volume-subpaths') && rel.length >= 3 && (st.isFile() || st.isDirectory())) {
      if (!m.readonly && rel[0] === 'volume-subpaths')
        refuse(field, `${what}: a writable subPath is shared with this node's volume, which the cell cannot see; mount it read-only or use an emptyDir without subPath`);
      if (
        !m.readonly &&
        rel[1] !== 'kubernetes.io~configmap' &&
        rel[1] !== 'kubernetes.io~secret' &&
        rel[1] !== 'kubernetes.io~projected' &&
        rel[1] !== 'kubernetes.io~downward-api'
      )
        refuse(
          field,
          `${what}: only the kubelet's configMap, secret, projected and downwardAPI volumes (copied to the cell) and emptyDirs are supported; ${rel[1]} volumes are not`,
        );
      out.push({ ...base, kind: 'content', readonly: true, volume: volumeName('kf', resolved), file: st.isFile() });
      readVolume(field, pod, resolved); // refused now if it cannot be shipped
    } else refuse(field, `${what}: not one of the kubelet's etc-hosts, termination-log or volume paths of this pod; refused`);
  });
  return out;
}

/** The kubelet writes this line before the pod's hostAliases in its etc-hosts (kubelet_pods.go). */
const HOST_ALIASES_MARKER = '# Entries added by HostAliases.';
/** An etc-hosts file is small; a bigger one is not the kubelet's. */
const MAX_HOSTS_BYTES = 64 * 1024;

/**
 * The pod's hostAliases, read back from the kubelet's etc-hosts (the CRI does not carry them; the
 * kubelet writes them into the file it mounts): the `IP<TAB>name…` lines after its marker. A file
 * that cannot be read, or a line that is not an address and names, adds nothing.
 */
export function hostAliasesOf(hostsFile: string): { ip: string; hostnames: string[] }[] {
  let text;
  try {
    const st = lstatSync(hostsFile);
    if (!st.isFile() || st.size > MAX_HOSTS_BYTES) return [];
    text = readFileSync(hostsFile, 'utf8');
  } catch {
    return [];
  }
  const at = text.indexOf(HOST_ALIASES_MARKER);
  if (at < 0) return [];
  const aliases: { ip: string; hostnames: string[] }[] = [];
  for (const line of text.slice(at + HOST_ALIASES_MARKER.length).split('\n')) {
    const [ip, ...names] = line.trim().split(/\s+/);
    if (!ip || !isIP(ip) || !names.length || names.some((n) => !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/.test(n))) continue;
    aliases.push({ ip, hostnames: names });
  }
  return aliases;
}

/**
 * The files of a content mount, read now: a directory walked (the kubelet's atomic-writer
 * internals, names starting with "..", are reached only through the visible names' symlinks), or
 * a single file. Every file must resolve inside the mount's own directory and the pod's.
 */
export function readVolume(field: string, podDirectory: string, hostPath: string): VolumeFile[] {
  const root = real(field, hostPath);
  if (!inside(podDirectory, root)) refuse(field, `${JSON.stringify(hostPath)} resolves to ${JSON.stringify(root)}, outside this pod's kubelet directory ${podDirectory}; refused`);
  const files: VolumeFile[] = [];
  let total = 0;
  const add = (path: string, abs: string, st: Stats) => {
    total += st.size;
    if (total > MAX_VOLUME_BYTES) refuse(field, `${JSON.stringify(hostPath)} holds more than ${MAX_VOLUME_BYTES} bytes, more than a volume shipped to a cell may`);
    if (files.length >= MAX_FILES) refuse(field, `${JSON.stringify(hostPath)} holds more than ${MAX_FILES} files`);
    files.push({ path, data: readFileSync(abs), mode: st.mode & 0o777 });
  };
  const rootStat = statSync(root);
  if (rootStat.isFile()) {
    add(root.slice(root.lastIndexOf(sep) + 1), root, rootStat);
    return files;
  }
  const walk = (dir: string, prefix: string, depth: number) => {
    if (depth > 16) refuse(field, `${JSON.stringify(hostPath)} nests directories more than 16 deep`);
    for (const name of readdirSync(dir).sort()) {
      if (name.startsWith('..')) continue;
      const abs = join(dir, name);
      const to = real(field, abs);
      if (!inside(root, to)) refuse(field, `${JSON.stringify(abs)} leads to ${JSON.stringify(to)}, outside the volume ${JSON.stringify(hostPath)}; refused`);
      const st = statSync(to);
      const path = prefix ? `${prefix}/${name}` : name;
      if (st.isDirectory()) {
        // A real subdirectory is walked; the atomic writer's own links lead into "..data".
        if (lstatSync(abs).isSymbolicLink() && to === root) continue;
        walk(to, path, depth + 1);
      } else if (st.isFile()) add(path, to, st);
      else refuse(field, `${JSON.stringify(abs)} is neither a file nor a directory`);
    }
  };
  walk(root, '', 0);
  return files;
}

export function podDirectoryOf(podsRoot: string, podUid: string): string {
  return podDir(podsRoot, podUid);
}

/** The container's volumeMounts (and terminationMessagePath) for its mapped mounts. */
export function volumeMountsOf(mounts: MappedMount[]): { volumeMounts: Record<string, unknown>[]; terminationMessagePath?: string } {
  const volumeMounts: Record<string, unknown>[] = [];
  let terminationMessagePath: string | undefined;
  for (const m of mounts) {
    if (m.kind === 'terminationLog') terminationMessagePath = m.containerPath;
    if (m.kind === 'emptyDir') volumeMounts.push({ name: m.volume, mountPath: m.containerPath, ...(m.readonly ? { readOnly: true } : {}) });
    if (m.kind === 'content')
      volumeMounts.push({ name: m.volume, mountPath: m.containerPath, readOnly: true, ...(m.file ? { subPath: m.hostPath.slice(m.hostPath.lastIndexOf(sep) + 1) } : {}) });
  }
  return { volumeMounts, ...(terminationMessagePath ? { terminationMessagePath } : {}) };
}

/** The pod's volumes and the Secrets holding their content, for every mount of the given containers. */
export function podVolumes(mounts: MappedMount[], podDirectory: string): { volumes: Record<string, unknown>[]; secrets: Record<string, unknown>[] } {
  const volumes = new Map<string, Record<string, unknown>>();
  const secrets: Record<string, unknown>[] = [];
  for (const m of mounts) {
    if (!m.volume || volumes.has(m.volume)) continue;
    if (m.kind === 'emptyDir') volumes.set(m.volume, { name: m.volume, emptyDir: {} });
    if (m.kind === 'content') {
      const files = readVolume(`mount ${m.containerPath}`, podDirectory, m.hostPath);
      const data = Object.fromEntries(files.map((f, i) => [`f${i}`, f.data.toString('base64')]));
      secrets.push({ apiVersion: 'v1', kind: 'Secret', metadata: { name: m.volume }, data });
      volumes.set(m.volume, { name: m.volume, secret: { secretName: m.volume, items: files.map((f, i) => ({ key: `f${i}`, path: f.path, mode: f.mode })) } });
    }
  }
  return { volumes: [...volumes.values()], secrets };
}
