// The RuntimeDefault seccomp profile. Docker's and containerd's defaults are allow-lists of
// ~350 syscalls tied to kernel versions; keeping such a list correct is a project of its own.
// Ours is a deny-list instead: everything is allowed except the syscalls that let a container
// reach the kernel's or the host's global state (module loading, kexec, reboot, mounting new
// filesystems, keyrings, perf/bpf, clock setting, swap, ptrace of other processes, personality
// tricks, userfaultfd, namespace creation beyond what runc set up). Those fail with EPERM, the
// way Docker's profile answers them. Privileged units run Unconfined, as in Kubernetes.
export const DENIED_SYSCALLS = [
  'acct', 'add_key', 'bpf', 'clock_adjtime', 'clock_settime', 'create_module', 'delete_module',
  'finit_module', 'get_kernel_syms', 'get_mempolicy', 'init_module', 'ioperm', 'iopl', 'kcmp',
  'kexec_file_load', 'kexec_load', 'keyctl', 'lookup_dcookie', 'mbind', 'mount', 'move_pages',
  'name_to_handle_at', 'nfsservctl', 'open_by_handle_at', 'perf_event_open', 'pivot_root',
  'process_vm_readv', 'process_vm_writev', 'ptrace', 'query_module', 'quotactl', 'reboot',
  'request_key', 'set_mempolicy', 'setns', 'settimeofday', 'stime', 'swapon', 'swapoff',
  'sysfs', '_sysctl', 'umount', 'umount2', 'unshare', 'uselib', 'userfaultfd', 'ustat', 'vm86',
  'vm86old', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'move_mount', 'open_tree',
];

export interface SeccompProfile {
  defaultAction: string;
  architectures?: string[];
  syscalls?: { names: string[]; action: string; errnoRet?: number; args?: unknown[] }[];
  [k: string]: unknown;
}

export function runtimeDefaultProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32', 'SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'],
    syscalls: [{ names: DENIED_SYSCALLS, action: 'SCMP_ACT_ERRNO', errnoRet: 1 }],
  };
}
