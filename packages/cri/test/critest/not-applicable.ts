// The critest specs that cannot apply to a VM per pod, each with its reason: the one list `npm run
// critest` skips (and prints), and the subset in `npm test` takes its skips from. Everything else
// critest runs is counted; a spec failing for any other reason is a failure, not an entry here.
// A cell is its own machine: its network, PID and IPC namespaces are its own, it cannot see this
// node's files, and the shim refuses (naming the field) what would need them. Privileged
// containers are not here: privileged over their own cell (the pod's VM), as on the virtual node.
export const NOT_APPLICABLE: Record<string, string> = {
  // Host namespaces: the pod's namespaces are its cell's; the node's do not reach it.
  'runtime should support HostNetwork is true': "a host-network sandbox is refused: a cell's network is its own, never the node's",
  'runtime should support portforward in host network': "a host-network sandbox is refused: a cell's network is its own, never the node's",
  'runtime should support HostPID': "a host-PID sandbox is refused: the node's processes are not on the cell",
  'runtime should support HostIpc is true': "a host-IPC sandbox is refused: the node's IPC namespace is not on the cell",
  'runtime should support NamespaceMode_NODE': "NODE namespaces are the node's, refused for a cell",
  // Host paths and propagation: the cell cannot see this node's files.
  'runtime should support starting container with volume [Conformance]':
    "a host-path mount of a node directory is refused: the cell cannot see this node's files (only the kubelet's own pod files are mapped)",
  'runtime should support starting container with volume when host path is a symlink [Conformance]': 'a host-path mount of a node directory is refused (as above)',
  "mount with 'rshared' should support propagation from host to container and vice versa": 'propagation between the node and a container on another machine is refused',
  "mount with 'rslave' should support propagation from host to container": 'propagation between the node and a container on another machine is refused',
  "mount with 'rprivate' should not support propagation": 'the spec mounts a node directory (refused, as above)',
  'should support recursive readonly mounts': 'the spec mounts a node directory (a tmpfs it mounts on the node) into the container (refused, as above)',
  'should support non-recursive readonly mounts': 'the spec mounts a node directory (a tmpfs it mounts on the node) into the container (refused, as above)',
  'should reject a recursive readonly mount with ReadOnly: false': 'the spec mounts a node directory (refused, as above)',
  'should reject a recursive readonly mount with PROPAGATION_HOST_TO_CONTAINER': 'the spec mounts a node directory with propagation from the node (refused, as above)',
  'should reject a recursive readonly mount with PROPAGATION_BIDIRECTIONAL': 'the spec mounts a node directory with propagation to the node (refused, as above)',
  // Node-local security profiles: the files are on the node, the container on the cell.
  'runtime should support an seccomp profile that blocks setting hostname with SYS_ADMIN': 'the profile is a Localhost file on the node, which the cell cannot read: refused',
  'should support seccomp localhost profile on the container': 'a node-local seccomp profile (localhost/…) is refused: the file is on the node, not on the cell',
  'should enforce a apparmor_profile blocking writes': "AppArmor profiles are loaded into the node's kernel, not the cell's: refused",
  'should enforce a permissive deprecated profile': "AppArmor profiles are loaded into the node's kernel, not the cell's: refused",
  'should work with apparmor profile': "AppArmor profiles are loaded into the node's kernel, not the cell's: refused",
  'should fail with an unloaded apparmor_profile': "AppArmor profiles are loaded into the node's kernel, not the cell's: refused",
  // Images that cannot be rebuilt offline.
  'public image with digest should be pulled and removed [Conformance]':
    "needs the upstream image's exact manifest (sha256:9700f9…), which a local registry cannot serve without the upstream bytes",
};

/** A ginkgo regexp matching exactly these specs' texts. */
export function skipPattern(specs: string[]): string {
  return specs.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|');
}
