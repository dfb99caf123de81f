// Container config, as the kubelet's kuberuntime builds it: one unit's OCI spec from the pod,
// its secrets and configmaps, the image's config, the prepared volumes and the pod's files.
// Pure of PodManager state, so it reads as one function from inputs to spec.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type ApplyPodRequest, type Container, SeccompProfileType } from '@cello/proto/cell';
import type { ImageInfo } from '../images/image-service.js';
import { resolveCapabilities } from '../runtime/capabilities.js';
import { expand, resolveArgv } from '../runtime/expand.js';
import type { Instance } from '../runtime/instance.js';
import { bindMount, buildSpec, type OciMount } from '../runtime/oci-spec.js';
import { resolveInRoot } from '../runtime/safe-path.js';
import { runtimeDefaultProfile, type SeccompProfile } from '../runtime/seccomp.js';
import { resolveUser, UserError } from '../runtime/user.js';
import { podHostname } from './pod-files.js';
import { ConfigError } from './unit.js';
import { fieldValue, type PreparedVolume, mountSubPath, resourceValue, VolumeError } from './volumes.js';

export interface ContainerConfigInput {
  req: ApplyPodRequest;
  unit: { name: string; spec: Container; cgroup: string };
  image: ImageInfo;
  inst: Instance;
  volumes: ReadonlyMap<string, PreparedVolume | VolumeError>;
  /** Read when the mounts are built (after the awaits above them), as a re-apply may rewrite them. */
  podFiles: () => { hosts: string; resolv: string; hostname: string };
  /** Where subPath mounts are staged, one dir per unit and mount. */
  subPathsDir: string;
  podIP: string;
  hostIP: string;
  seccompProfileDir: string;
  netnsPath: string | undefined;
  /** The pod's shared PID namespace (shareProcessNamespace), if it has one. */
  pidnsPath?: string | undefined;
}

/** The unit's OCI spec; a ConfigError says what in the pod makes it impossible to build. */
export async function buildContainerConfig(x: ContainerConfigInput): Promise<Record<string, unknown>> {
  const { req, unit: u, image, inst } = x;
  const pod = req.pod!;
  const spec = pod.spec!;
  const c = u.spec;
  const psc = spec.securityContext;
  const sc = c.securityContext;
  // Environment: image, then envFrom, then env, with $(VAR) expansion over what came before.
  const env = new Map<string, string>();
  for (const e of image.config.env) {
    const i = e.indexOf('=');
    if (i > 0) env.set(e.slice(0, i), e.slice(i + 1));
  }
  env.set('HOSTNAME', podHostname(pod));
  for (const [i, ef] of c.envFrom.entries()) {
    const src = ef.source;
    if (!src) continue;
    const name = src.value.name;
    const data =
      src.$case === 'secretRef'
        ? req.secrets[name] && Object.fromEntries(Object.entries(req.secrets[name]!.data).map(([k, v]) => [k, Buffer.from(v).toString('utf8')]))
        : req.configMaps[name]?.data;
    if (!data) {
      if (src.value.optional) continue;
      throw new ConfigError(`envFrom[${i}]: ${src.$case === 'secretRef' ? 'secret' : 'configmap'} "${name}" not found`);
    }
    for (const [k, v] of Object.entries(data)) env.set(ef.prefix + k, v);
  }
  for (const e of c.env) {
    const vf = e.valueFrom?.source;
    if (!vf) {
      env.set(
        e.name,
        expand(e.value, (n) => env.get(n)),
      );
      continue;
    }
    let v: string | undefined;
    switch (vf.$case) {
      case 'secretKeyRef': {
        const s = req.secrets[vf.value.name];
        const b = s?.data[vf.value.key];
        if (b === undefined && !vf.value.optional) throw new ConfigError(`env ${e.name}: ${s ? `key "${vf.value.key}" not found in` : 'missing'} secret "${vf.value.name}"`);
        v = b === undefined ? undefined : Buffer.from(b).toString('utf8');
        break;
      }
      case 'configMapKeyRef': {
        const m = req.configMaps[vf.value.name];
        v = m?.data[vf.value.key];
        if (v === undefined && !vf.value.optional) throw new ConfigError(`env ${e.name}: ${m ? `key "${vf.value.key}" not found in` : 'missing'} configmap "${vf.value.name}"`);
        break;
      }
      case 'fieldRef':
        try {
          v = fieldValue(pod, vf.value, x.podIP, x.hostIP);
        } catch (err) {
          throw new ConfigError(`env ${e.name}: ${(err as Error).message}`);
        }
        break;
      case 'resourceFieldRef':
        try {
          v = resourceValue(pod, vf.value, c.name);
        } catch (err) {
          throw new ConfigError(`env ${e.name}: ${(err as Error).message}`);
        }
        break;
    }
    if (v !== undefined) env.set(e.name, v);
  }
  const argv = resolveArgv({ command: c.command, args: c.args, entrypoint: image.config.entrypoint, cmd: image.config.cmd, env });
  if (argv.length === 0) throw new ConfigError('no command specified: the image has no entrypoint or cmd and the container has no command');
  // User and groups from the image.
  let user;
  try {
    // cello-cri's fields (the CRI's, per container): a user by name, the container's own groups and policy.
    const cri = sc?.cri;
    user = resolveUser({
      layers: image.layerDirs,
      imageUser: image.config.user,
      runAsUser: sc?.runAsUser ?? (cri?.runAsUsername ? undefined : psc?.runAsUser),
      runAsGroup: sc?.runAsGroup ?? psc?.runAsGroup,
      runAsUsername: cri?.runAsUsername || undefined,
      supplementalGroups: [...(psc?.supplementalGroups ?? []), ...(cri?.supplementalGroups ?? [])],
      fsGroup: psc?.fsGroup,
      strictGroups: (cri?.supplementalGroupsPolicy || psc?.supplementalGroupsPolicy) === 'Strict',
    });
  } catch (err) {
    if (err instanceof UserError) throw new ConfigError(err.message);
    throw err;
  }
  const nonRoot = sc?.runAsNonRoot ?? psc?.runAsNonRoot;
  if (nonRoot && user.uid === 0) {
    throw new ConfigError(`container has runAsNonRoot and image will run as root (pod: "${pod.metadata?.name}", container: ${c.name})`);
  }
  if (!env.has('HOME')) env.set('HOME', user.home);
  const privileged = sc?.privileged ?? false;
  // Seccomp: container, else pod, else RuntimeDefault; privileged units are unconfined.
  const prof = sc?.seccompProfile?.type ? sc.seccompProfile : psc?.seccompProfile?.type ? psc.seccompProfile : undefined;
  const capabilities = resolveCapabilities({ add: sc?.capabilities?.add ?? [], drop: sc?.capabilities?.drop ?? [], privileged });
  // RuntimeDefault's allow-list depends on the capabilities (CAP_SYS_ADMIN may unshare, ...).
  let seccomp: SeccompProfile | undefined = runtimeDefaultProfile(capabilities);
  if (privileged || prof?.type === SeccompProfileType.SECCOMP_PROFILE_TYPE_UNCONFINED) seccomp = undefined;
  else if (prof?.type === SeccompProfileType.SECCOMP_PROFILE_TYPE_LOCALHOST) {
    const p = resolveInRoot(x.seccompProfileDir, prof.localhostProfile);
    try {
      seccomp = JSON.parse(await readFile(p, 'utf8')) as SeccompProfile;
    } catch (err) {
      throw new ConfigError(`seccomp Localhost profile "${prof.localhostProfile}" cannot be loaded from ${x.seccompProfileDir}: ${(err as Error).message}`);
    }
  }
  // Mounts: volumes, then the pod's files unless a volume covers them, then the
  // termination-message file.
  const mounts: OciMount[] = [];
  const dests = new Set<string>();
  for (const [i, m] of c.volumeMounts.entries()) {
    const v = x.volumes.get(m.name);
    if (!v) throw new ConfigError(`volume "${m.name}" is not prepared`);
    if (v instanceof VolumeError) throw new ConfigError(v.message);
    let src = v.hostPath;
    const sub = m.subPathExpr ? expand(m.subPathExpr, (n) => env.get(n)) : m.subPath;
    if (sub) {
      try {
        // One staging path per unit and mount, reused (remounted) by the unit's next instance.
        src = await mountSubPath(v.hostPath, sub, join(x.subPathsDir, u.name, String(i)));
      } catch (err) {
        throw new ConfigError(`volumeMounts "${m.name}" subPath: ${(err as Error).message}`);
      }
    }
    mounts.push(bindMount(src, m.mountPath, m.readOnly || v.forceReadOnly));
    dests.add(m.mountPath);
  }
  const pf = x.podFiles();
  if (!dests.has('/etc/hosts')) mounts.push(bindMount(pf.hosts, '/etc/hosts', false));
  if (!dests.has('/etc/resolv.conf')) mounts.push(bindMount(pf.resolv, '/etc/resolv.conf', false));
  if (!dests.has('/etc/hostname')) mounts.push(bindMount(pf.hostname, '/etc/hostname', false));
  mounts.push(bindMount(inst.paths.termination, c.terminationMessagePath || '/dev/termination-log', false));
  const sysctls: Record<string, string> = {};
  for (const s of psc?.sysctls ?? []) sysctls[s.name] = s.value;
  return buildSpec({
    rootfs: inst.paths.rootfs,
    rootMount: inst.rootMount(),
    readOnlyRoot: sc?.readOnlyRootFilesystem ?? false,
    argv,
    env: [...env].map(([k, v]) => `${k}=${v}`),
    cwd: c.workingDir || image.config.workingDir || '/',
    user,
    tty: c.tty,
    hostname: podHostname(pod),
    capabilities,
    noNewPrivileges: !privileged && sc?.allowPrivilegeEscalation === false,
    seccomp,
    privileged,
    procPaths: sc?.cri?.procPaths,
    mounts,
    cgroupsPath: `${u.cgroup}/i${inst.instance}`,
    netnsPath: x.netnsPath,
    pidnsPath: x.pidnsPath,
    sysctls,
    shmBytes: 64 * 1024 * 1024,
  });
}
