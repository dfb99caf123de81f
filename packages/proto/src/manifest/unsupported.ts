// Pod fields Kubernetes accepts that a cell cannot honour, refused with the field named rather
// than accepted and ignored: the pod would otherwise run without what it asked for (a user
// namespace, a mount propagated to the host, an AppArmor profile, a device...).
import { fieldPath, ManifestError } from './errors.js';
import type { PodManifest } from './schema.js';

type Path = (string | number)[];
type Spec = PodManifest['spec'];
type SecurityContextLike = { appArmorProfile?: { type: string } | undefined; procMount?: string | undefined } | undefined;

function refuse(path: Path, problem: string): never {
  throw new ManifestError(fieldPath(path), problem);
}

// The kubelet's own refusal on a host without AppArmor (any profile but Unconfined "requires" it).
function appArmor(path: Path, sc: SecurityContextLike): void {
  const t = sc?.appArmorProfile?.type;
  if (t && t !== 'Unconfined') refuse([...path, 'appArmorProfile', 'type'], `${t}: cannot enforce AppArmor: a cell loads no AppArmor profiles (only Unconfined runs)`);
}

// The API server's rule (readOnly: true), then a cell's: the volumes it makes for a pod have
// nothing mounted beneath them, so their read-only mount is already recursive; a hostPath's
// submounts would stay writable, which IfPossible allows and Enabled does not.
function recursiveReadOnly(path: Path, m: { readOnly?: boolean | undefined; recursiveReadOnly?: string | undefined }, hostPath: boolean): void {
  const r = m.recursiveReadOnly;
  if (!r || r === 'Disabled') return;
  if (!m.readOnly) refuse([...path, 'recursiveReadOnly'], `${r} requires readOnly: true`);
  if (r === 'Enabled' && hostPath)
    refuse([...path, 'recursiveReadOnly'], 'Enabled is not supported on a hostPath volume on a cell: its submounts would stay writable (IfPossible is allowed)');
}

export function refuseUnsupported(s: Spec): void {
  if (s.hostUsers === false) refuse(['spec', 'hostUsers'], 'false (a user namespace for the pod) is not supported on a cell');
  if (s.setHostnameAsFQDN) refuse(['spec', 'setHostnameAsFQDN'], "true is not supported on a cell: the pod's hostname is its short name");
  if (s.resources !== undefined)
    refuse(['spec', 'resources'], 'pod-level resources are not supported on a cell: give each container its requests and limits (the cell is sized from them)');
  if (s.resourceClaims?.length) refuse(['spec', 'resourceClaims'], 'dynamic resource allocation is not supported on a cell');
  if (s.runtimeClassName)
    refuse(['spec', 'runtimeClassName'], `${s.runtimeClassName}: RuntimeClasses are not supported on a cell: it runs every container with its one runtime (runc)`);
  if (s.overhead && Object.keys(s.overhead).length)
    refuse(['spec', 'overhead'], "pod overhead (a RuntimeClass's) is not supported on a cell: the cell is sized from the containers' requests and limits");
  appArmor(['spec', 'securityContext'], s.securityContext);
  const hostPathVolumes = new Set((s.volumes ?? []).filter((v) => v.hostPath !== undefined).map((v) => v.name));
  for (const kind of ['initContainers', 'containers'] as const) {
    (s[kind] ?? []).forEach((c, i) => {
      const path: Path = ['spec', kind, i];
      appArmor([...path, 'securityContext'], c.securityContext);
      if (c.securityContext?.procMount === 'Unmasked')
        refuse([...path, 'securityContext', 'procMount'], 'Unmasked is not supported on a cell (it needs a user namespace, hostUsers: false)');
      if (c.volumeDevices?.length) refuse([...path, 'volumeDevices'], 'raw block devices are not supported on a cell: it has no persistent volumes');
      if (c.resources?.claims?.length) refuse([...path, 'resources', 'claims'], 'dynamic resource allocation is not supported on a cell');
      (c.volumeMounts ?? []).forEach((m, j) => {
        if (m.mountPropagation && m.mountPropagation !== 'None')
          refuse([...path, 'volumeMounts', j, 'mountPropagation'], `${m.mountPropagation} is not supported on a cell: it has no host mounts to propagate (only None)`);
        recursiveReadOnly([...path, 'volumeMounts', j], m, hostPathVolumes.has(m.name));
      });
    });
  }
  (s.volumes ?? []).forEach((v, i) =>
    (v.projected?.sources ?? []).forEach((src, j) => {
      if (src.clusterTrustBundle !== undefined)
        refuse(['spec', 'volumes', i, 'projected', 'sources', j, 'clusterTrustBundle'], 'ClusterTrustBundle projections are not supported on a cell');
    }),
  );
}
