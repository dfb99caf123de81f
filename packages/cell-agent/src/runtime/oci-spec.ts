// The OCI runtime spec (config.json) the agent writes for each unit instance. The shape follows
// `runc spec` and containerd's defaults (masked and read-only /proc paths, devices, mounts).
import { readFileSync } from 'node:fs';
import type { ResolvedUser } from './user.js';
import type { SeccompProfile } from './seccomp.js';

export interface OciMount {
  destination: string;
  type?: string;
  source: string;
  options?: string[];
}

export interface SpecInput {
  rootfs: string;
  /** Mounted first, at "/" (the overlay of the image layers), when the rootfs dir is empty. */
  rootMount?: OciMount;
  readOnlyRoot: boolean;
  argv: string[];
  env: string[];
  cwd: string;
  user: ResolvedUser;
  tty: boolean;
  hostname: string;
  capabilities: string[];
  noNewPrivileges: boolean;
  seccomp: SeccompProfile | undefined;
  privileged: boolean;
  /** The /proc and /sys paths to mask and make read-only (cello-cri's, from the CRI); undefined: the defaults. */
  procPaths?: { masked: string[]; readonly: string[] } | undefined;
  /** Bind mounts for volumes and pod files, in order. */
  mounts: OciMount[];
  cgroupsPath: string;
  /** Path of the pod's network namespace; undefined shares the agent's own. */
  netnsPath: string | undefined;
  /** Path of a PID namespace to join (shareProcessNamespace); undefined: the unit's own. */
  pidnsPath?: string | undefined;
  sysctls: Record<string, string>;
  /** Size of the unit's /dev/shm. */
  shmBytes: number;
}

// containerd's 1048576, bounded by the hard limit runc inherits from the agent: runc sets
// rlimits after dropping capabilities, so it cannot raise them past that.
const NOFILE = (() => {
  try {
    const m = /Max open files\s+\d+\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
    return Math.min(1048576, m ? Number(m[1]) : 1048576);
  } catch {
    return 1048576;
  }
})();

const MASKED = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];
const READONLY = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export function buildSpec(i: SpecInput): Record<string, unknown> {
  const caps = i.capabilities;
  // Non-root users keep only bounding caps, as in containerd: effective/permitted would let a
  // uid != 0 bypass permissions the image expects to apply.
  const root = i.user.uid === 0;
  const mounts: OciMount[] = [
    ...(i.rootMount ? [i.rootMount] : []),
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${i.shmBytes}`] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', i.privileged ? 'rw' : 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
    ...i.mounts,
  ];
  const namespaces: { type: string; path?: string }[] = [i.pidnsPath ? { type: 'pid', path: i.pidnsPath } : { type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  if (i.netnsPath) namespaces.push({ type: 'network', path: i.netnsPath });
  const linux: Record<string, unknown> = {
    cgroupsPath: i.cgroupsPath,
    namespaces,
    resources: { devices: [{ allow: i.privileged, access: 'rwm' }] },
    sysctl: i.sysctls,
  };
  // A privileged unit sees /proc and /sys whole, as on containerd, whatever the lists say.
  if (!i.privileged) {
    linux.maskedPaths = i.procPaths ? i.procPaths.masked : MASKED;
    linux.readonlyPaths = i.procPaths ? i.procPaths.readonly : READONLY;
  }
  if (i.seccomp) linux.seccomp = i.seccomp;
  return {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: i.tty,
      user: { uid: i.user.uid, gid: i.user.gid, additionalGids: i.user.additionalGids },
      args: i.argv,
      env: i.env,
      cwd: i.cwd || '/',
      capabilities: {
        bounding: caps,
        effective: root ? caps : [],
        permitted: root ? caps : [],
        inheritable: [],
        ambient: [],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: NOFILE, soft: NOFILE }],
      noNewPrivileges: i.noNewPrivileges,
    },
    root: { path: i.rootfs, readonly: i.readOnlyRoot },
    hostname: i.hostname,
    mounts,
    linux,
  };
}

/** A read-only or read-write bind mount, as runc wants it. */
export function bindMount(source: string, destination: string, readOnly: boolean): OciMount {
  return { destination, type: 'bind', source, options: ['rbind', 'rprivate', readOnly ? 'ro' : 'rw'] };
}
