// Builds the pod's volumes on the cell's disk under <state>/volumes/<name>, the way the kubelet
// does: emptyDir (a directory, or a tmpfs with its size limit for medium Memory), hostPath
// (with its type check), and the projected kinds (secret, configMap, downwardAPI, projected)
// written as files with their modes. Item paths and subPaths are resolved inside their roots.
import { execFile } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, statSync, writeFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import type {
  ApplyPodRequest,
  ConfigMapVolumeSource,
  DownwardAPIVolumeSource,
  KeyToPath,
  ObjectFieldSelector,
  Pod,
  ResourceFieldSelector,
  SecretVolumeSource,
  Volume,
} from '@cello/proto/cell';
import { HostPathType, StorageMedium } from '@cello/proto/cell';
import { checkItemPath, resolveInRoot } from '../runtime/safe-path.js';
import { stageSubPath, SubPathError } from '../runtime/subpath-mount.js';
import { checkPayloadPath, writeAtomic } from './atomic-writer.js';
import { CelloError } from '@cello/proto';

export class VolumeError extends CelloError {
  constructor(
    readonly volume: string,
    message: string,
  ) {
    super('InvalidArgument', `volume "${volume}": ${message}`);
  }
}

export interface PreparedVolume {
  name: string;
  hostPath: string;
  /** Secret-like volumes are always mounted read-only. */
  forceReadOnly: boolean;
}

function sh(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => execFile(cmd, args, (err, _o, stderr) => (err ? reject(new Error(`${cmd}: ${String(stderr).trim() || err.message}`)) : resolve())));
}

function isMountPoint(p: string): boolean {
  try {
    return statSync(p).dev !== statSync(dirname(p)).dev;
  } catch {
    return false;
  }
}

/** Field values for downward API and env fieldRef. */
export function fieldValue(pod: Pod, sel: ObjectFieldSelector, podIP: string, hostIP: string): string {
  const md = pod.metadata;
  const f = sel.fieldPath;
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(f);
  if (m) return (m[1] === 'labels' ? md?.labels : md?.annotations)?.[m[2]!] ?? '';
  switch (f) {
    case 'metadata.name':
      return md?.name ?? '';
    case 'metadata.namespace':
      return md?.namespace ?? '';
    case 'metadata.uid':
      return md?.uid ?? '';
    case 'metadata.labels':
      return Object.entries(md?.labels ?? {})
        .sort()
        .map(([k, v]) => `${k}="${v}"`)
        .join('\n');
    case 'metadata.annotations':
      return Object.entries(md?.annotations ?? {})
        .sort()
        .map(([k, v]) => `${k}="${v}"`)
        .join('\n');
    case 'status.podIP':
      return podIP;
    // The kubelet joins the pod's (and host's) IPs with commas; a cell has one IPv4 of each.
    case 'status.podIPs':
      return podIP;
    case 'status.hostIP':
      return hostIP;
    case 'status.hostIPs':
      return hostIP;
    case 'spec.serviceAccountName':
      return pod.spec?.serviceAccountName ?? '';
    case 'spec.nodeName':
      return hostIP;
    default:
      throw new Error(`unsupported fieldPath "${f}"`);
  }
}

// The divisors the API server accepts, as it serializes them ("1Mi", "1m"), and without their
// leading 1. An unset divisor reaches the cell as the zero quantity "0": the kubelet reads a zero
// divisor as 1.
const DIVISORS: Record<string, number> = Object.fromEntries(
  Object.entries({
    '': 1,
    '0': 1,
    '1': 1,
    m: 0.001,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    P: 1e15,
    E: 1e18,
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    Ti: 1024 ** 4,
    Pi: 1024 ** 5,
    Ei: 1024 ** 6,
  }).flatMap(([k, v]) =>
    k === '' || k === '0' || k === '1'
      ? [[k, v]]
      : [
          [k, v],
          [`1${k}`, v],
        ],
  ),
);

export function resourceValue(pod: Pod, sel: ResourceFieldSelector, defaultContainer: string): string {
  const name = sel.containerName || defaultContainer;
  const c = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])].find((x) => x.name === name);
  if (!c) throw new Error(`resourceFieldRef: no container "${name}"`);
  const [kind, res] = sel.resource.split('.');
  const list = kind === 'limits' ? c.resources?.limits : c.resources?.requests;
  const div = DIVISORS[sel.divisor ?? ''];
  if (div === undefined) throw new Error(`resourceFieldRef: unsupported divisor "${sel.divisor}"`);
  if (res === 'cpu') {
    const cores = (list?.cpuMillis ?? (kind === 'limits' ? 1000 * cpus().length : 0)) / 1000;
    return String(Math.ceil(cores / div));
  }
  // As the kubelet: a limit that is not set is the node's allocatable (a cell is the pod's node).
  if (res === 'memory') return String(Math.ceil((list?.memoryBytes ?? (kind === 'limits' ? totalmem() : 0)) / div));
  if (res === 'ephemeral-storage') return String(Math.ceil((list?.ephemeralStorageBytes ?? 0) / div));
  throw new Error(`resourceFieldRef: unsupported resource "${sel.resource}"`);
}

interface FileOut {
  path: string;
  data: Buffer;
  mode: number;
}

export class VolumeBuilder {
  constructor(
    private readonly root: string,
    private readonly req: ApplyPodRequest,
    private readonly podIP: string,
    private readonly hostIP: string,
  ) {}

  private keyFiles(volume: string, kind: string, name: string, data: Map<string, Buffer> | undefined, items: KeyToPath[], defaultMode: number, optional: boolean): FileOut[] {
    if (!data) {
      if (optional) return [];
      throw new VolumeError(volume, `${kind} "${name}" not found`);
    }
    const out: FileOut[] = [];
    if (items.length === 0) {
      for (const [k, v] of data) out.push({ path: k, data: v, mode: defaultMode });
    } else {
      for (const [i, it] of items.entries()) {
        const bad = checkItemPath(it.path);
        if (bad) throw new VolumeError(volume, `items[${i}].path "${it.path}" ${bad}`);
        const v = data.get(it.key);
        if (!v) {
          if (optional) continue;
          throw new VolumeError(volume, `${kind} "${name}" has no key "${it.key}" (items[${i}].key)`);
        }
        out.push({ path: it.path, data: v, mode: it.mode ?? defaultMode });
      }
    }
    return out;
  }

  private secretFiles(volume: string, s: SecretVolumeSource, defaultMode: number): FileOut[] {
    const d = this.req.secrets[s.secretName];
    return this.keyFiles(
      volume,
      'secret',
      s.secretName,
      d ? new Map(Object.entries(d.data).map(([k, v]) => [k, Buffer.from(v)])) : undefined,
      s.items,
      s.defaultMode ?? defaultMode,
      s.optional,
    );
  }

  private configMapFiles(volume: string, c: ConfigMapVolumeSource, defaultMode: number): FileOut[] {
    const d = this.req.configMaps[c.name];
    const m = d
      ? new Map<string, Buffer>([
          ...Object.entries(d.data).map(([k, v]) => [k, Buffer.from(v, 'utf8')] as [string, Buffer]),
          ...Object.entries(d.binaryData).map(([k, v]) => [k, Buffer.from(v)] as [string, Buffer]),
        ])
      : undefined;
    return this.keyFiles(volume, 'configMap', c.name, m, c.items, c.defaultMode ?? defaultMode, c.optional);
  }

  private downwardFiles(volume: string, d: DownwardAPIVolumeSource, defaultMode: number): FileOut[] {
    const pod = this.req.pod!;
    return d.items.map((it, i) => {
      const bad = checkItemPath(it.path);
      if (bad) throw new VolumeError(volume, `items[${i}].path "${it.path}" ${bad}`);
      let v: string;
      try {
        if (it.fieldRef) v = fieldValue(pod, it.fieldRef, this.podIP, this.hostIP);
        else if (it.resourceFieldRef) v = resourceValue(pod, it.resourceFieldRef, '');
        else throw new Error('needs fieldRef or resourceFieldRef');
      } catch (err) {
        throw new VolumeError(volume, `items[${i}]: ${(err as Error).message}`);
      }
      return { path: it.path, data: Buffer.from(v), mode: it.mode ?? d.defaultMode ?? defaultMode };
    });
  }

  /**
   * Makes dir show exactly these files, atomically and in place (see atomic-writer.ts): dir is
   * the source of running containers' bind mounts, so a re-apply with changed data (a refreshed
   * token, an edited Secret) reaches them without a restart, as with the kubelet.
   */
  private writeFiles(volume: string, dir: string, files: FileOut[], fsGroup: number | undefined): void {
    const byPath = new Map<string, FileOut>(); // a later projection of the same path wins, as before
    for (const f of files) {
      const bad = checkPayloadPath(f.path);
      if (bad) throw new VolumeError(volume, `path "${f.path}" ${bad}`);
      byPath.set(f.path, f);
    }
    try {
      if (writeAtomic(dir, [...byPath.values()], fsGroup !== undefined ? { fsGroup } : {})) this.rewritten.push(volume);
    } catch (err) {
      throw new VolumeError(volume, (err as Error).message);
    }
  }

  /** Names of the volumes whose files this builder changed. */
  readonly rewritten: string[] = [];

  async prepare(v: Volume): Promise<PreparedVolume> {
    const dir = join(this.root, v.name);
    const fsGroup = this.req.pod?.spec?.securityContext?.fsGroup;
    const src = v.source;
    if (!src) throw new VolumeError(v.name, 'has no source');
    switch (src.$case) {
      case 'emptyDir': {
        // As the kubelet's emptyDir plugin (setupDir): 0777 whatever the pod's securityContext, so
        // that a unit running as any user can write it (kubernetes/kubernetes#2630 keeps it so);
        // a memory emptyDir is a tmpfs whose root is 1777, as tmpfs makes it by default.
        mkdirSync(dir, { recursive: true, mode: 0o777 });
        chmodSync(dir, 0o777);
        if (src.value.medium === StorageMedium.STORAGE_MEDIUM_MEMORY && !isMountPoint(dir)) {
          const size = src.value.sizeLimitBytes;
          await sh('mount', ['-t', 'tmpfs', '-o', `mode=1777${size ? `,size=${size}` : ''}`, 'tmpfs', dir]);
        }
        // fsGroup, as the kubelet's SetVolumeOwnership then does: the group owns the root, which
        // gains group rwx and setgid so that what the units create there belongs to it as well.
        // Only the root: the volume is new, and later files inherit the group through setgid.
        if (fsGroup !== undefined) {
          chownSync(dir, -1, fsGroup);
          chmodSync(dir, (statSync(dir).mode & 0o7777) | 0o2070);
        }
        return { name: v.name, hostPath: dir, forceReadOnly: false };
      }
      case 'hostPath': {
        const p = src.value.path;
        if (!p.startsWith('/')) throw new VolumeError(v.name, `hostPath.path "${p}" must be absolute`);
        checkHostPath(v.name, p, src.value.type);
        return { name: v.name, hostPath: p, forceReadOnly: false };
      }
      case 'secret':
        this.writeFiles(v.name, dir, this.secretFiles(v.name, src.value, 0o644), fsGroup);
        return { name: v.name, hostPath: dir, forceReadOnly: true };
      case 'configMap':
        this.writeFiles(v.name, dir, this.configMapFiles(v.name, src.value, 0o644), fsGroup);
        return { name: v.name, hostPath: dir, forceReadOnly: true };
      case 'downwardApi':
        this.writeFiles(v.name, dir, this.downwardFiles(v.name, src.value, src.value.defaultMode ?? 0o644), fsGroup);
        return { name: v.name, hostPath: dir, forceReadOnly: true };
      case 'projected': {
        const mode = src.value.defaultMode ?? 0o644;
        const files: FileOut[] = [];
        for (const [i, s] of src.value.sources.entries()) {
          const ps = s.source;
          if (!ps) throw new VolumeError(v.name, `sources[${i}] is empty`);
          if (ps.$case === 'secret') files.push(...this.secretFiles(v.name, ps.value, mode));
          else if (ps.$case === 'configMap') files.push(...this.configMapFiles(v.name, ps.value, mode));
          else if (ps.$case === 'downwardApi') files.push(...this.downwardFiles(v.name, ps.value, mode));
          else {
            const tok = this.req.serviceAccountTokens.find((t) => t.volume === v.name && t.path === ps.value.path);
            if (!tok) throw new VolumeError(v.name, `sources[${i}].serviceAccountToken: no token for path "${ps.value.path}" in the request`);
            files.push({ path: ps.value.path, data: Buffer.from(tok.token), mode });
          }
        }
        this.writeFiles(v.name, dir, files, fsGroup);
        return { name: v.name, hostPath: dir, forceReadOnly: true };
      }
    }
  }
}

function checkHostPath(volume: string, p: string, type: HostPathType): void {
  const st = (() => {
    try {
      return lstatSync(p);
    } catch {
      return undefined;
    }
  })();
  const want = (ok: boolean, what: string) => {
    if (!ok) throw new VolumeError(volume, `hostPath ${p} is not ${what}`);
  };
  switch (type) {
    case HostPathType.HOST_PATH_TYPE_DIRECTORY_OR_CREATE:
      if (!st) mkdirSync(p, { recursive: true, mode: 0o755 });
      else want(statSync(p).isDirectory(), 'a directory');
      return;
    case HostPathType.HOST_PATH_TYPE_FILE_OR_CREATE:
      if (!st) {
        if (!existsSync(dirname(p))) throw new VolumeError(volume, `hostPath ${p}: parent directory does not exist`);
        writeFileSync(p, '', { mode: 0o644 });
      } else want(statSync(p).isFile(), 'a file');
      return;
    case HostPathType.HOST_PATH_TYPE_DIRECTORY:
      want(!!st && statSync(p).isDirectory(), 'an existing directory');
      return;
    case HostPathType.HOST_PATH_TYPE_FILE:
      want(!!st && statSync(p).isFile(), 'an existing file');
      return;
    case HostPathType.HOST_PATH_TYPE_SOCKET:
      want(!!st && statSync(p).isSocket(), 'a socket');
      return;
    case HostPathType.HOST_PATH_TYPE_CHAR_DEVICE:
      want(!!st && statSync(p).isCharacterDevice(), 'a character device');
      return;
    case HostPathType.HOST_PATH_TYPE_BLOCK_DEVICE:
      want(!!st && statSync(p).isBlockDevice(), 'a block device');
      return;
    default:
      return;
  }
}

/**
 * Resolves a mount's subPath inside its volume, symlinks followed as if the volume were "/",
 * and returns it relative to the volume. Only a name to open: the volume may change before
 * it is used, so mountSubPath opens it again without following anything.
 */
export function resolveSubPath(volumeRoot: string, subPath: string): string {
  if (subPath.startsWith('/')) throw new Error(`subPath "${subPath}" must be relative`);
  if (subPath.split('/').includes('..')) throw new Error(`subPath "${subPath}" must not contain '..'`);
  const p = resolveInRoot(volumeRoot, subPath);
  if (p !== volumeRoot && !p.startsWith(volumeRoot + '/')) throw new Error(`subPath "${subPath}" resolves outside its volume`);
  return relative(volumeRoot, p);
}

/**
 * Stages a mount's subPath on `staging` (see runtime/subpath-mount.ts) and returns the path
 * runc is to mount. A symlink swapped into the path after it was resolved is refused.
 * `afterResolve` runs between resolving and opening (tests swap components there).
 */
export async function mountSubPath(volumeRoot: string, subPath: string, staging: string, afterResolve?: () => void): Promise<string> {
  const rel = resolveSubPath(volumeRoot, subPath);
  afterResolve?.();
  try {
    return await stageSubPath(volumeRoot, rel, staging);
  } catch (err) {
    if (err instanceof SubPathError) throw new Error(`subPath "${subPath}": ${err.message}`);
    throw err;
  }
}

/** Unmounts tmpfs emptyDirs and removes the pod's volume dirs. */
export async function removeVolumes(root: string): Promise<void> {
  if (!existsSync(root)) return;
  for (const e of readdirSync(root)) {
    const p = join(root, e);
    if (isMountPoint(p)) await sh('umount', ['-l', p]).catch(() => {});
  }
  rmSync(root, { recursive: true, force: true });
}
