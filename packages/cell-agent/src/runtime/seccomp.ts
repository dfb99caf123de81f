// The RuntimeDefault seccomp profile: the allow-list of Docker's and containerd's default
// profile, so that a pod sees the same syscall surface here as on any Kubernetes node. A
// deny-list let through what nobody thought to deny: clone/unshare with namespace flags (an
// unprivileged user namespace, then nf_tables as "root" in it), io_uring, personality tricks.
//
// Source (data only, restated as groups below): moby/moby profiles/seccomp/default.json at
// commit 00f3d189e420d485e42d15fe494f96d272284e0e (Apache-2.0), the same list containerd's
// contrib/seccomp generates. Groups and their conditions follow that file: a group with `caps`
// applies only when the unit has every one of those capabilities, `notCaps` only when it has
// none of them, `arches` only on those architectures (Go names, as in the source).
// Updating: compare with the newest default.json and carry over added names and groups.

export interface SeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: 'SCMP_CMP_EQ' | 'SCMP_CMP_NE' | 'SCMP_CMP_MASKED_EQ';
}

export interface SeccompProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures?: string[];
  syscalls?: { names: string[]; action: string; errnoRet?: number; args?: SeccompArg[] }[];
  [k: string]: unknown;
}

interface Group {
  names: string[];
  action?: 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO';
  errnoRet?: number;
  args?: SeccompArg[];
  caps?: string[];
  notCaps?: string[];
  arches?: string[];
  notArches?: string[];
}

const EPERM = 1;
const ENOSYS = 38;

// Every CLONE_NEW* flag (and CLONE_NEWCGROUP/NEWTIME): clone may not create namespaces
// without CAP_SYS_ADMIN. 0x7E020000 = NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
const CLONE_NAMESPACE_FLAGS = 2114060288;

/** Syscalls every unit may make, whatever its capabilities. */
export const ALLOWED_SYSCALLS: readonly string[] = [
  'accept', 'accept4', 'access', 'adjtimex', 'alarm', 'bind', 'brk', 'capget', 'capset', 'chdir',
  'chmod', 'chown', 'chown32', 'clock_adjtime', 'clock_adjtime64', 'clock_getres',
  'clock_getres_time64', 'clock_gettime', 'clock_gettime64', 'clock_nanosleep',
  'clock_nanosleep_time64', 'close', 'close_range', 'connect', 'copy_file_range', 'creat', 'dup',
  'dup2', 'dup3', 'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait',
  'epoll_pwait2', 'epoll_wait', 'epoll_wait_old', 'eventfd', 'eventfd2', 'execve', 'execveat',
  'exit', 'exit_group', 'faccessat', 'faccessat2', 'fadvise64', 'fadvise64_64', 'fallocate',
  'fanotify_mark', 'fchdir', 'fchmod', 'fchmodat', 'fchown', 'fchown32', 'fchownat', 'fcntl',
  'fcntl64', 'fdatasync', 'fgetxattr', 'flistxattr', 'flock', 'fork', 'fremovexattr',
  'fsetxattr', 'fstat', 'fstat64', 'fstatat64', 'fstatfs', 'fstatfs64', 'fsync', 'ftruncate',
  'ftruncate64', 'futex', 'futex_time64', 'futex_waitv', 'futimesat', 'getcpu', 'getcwd',
  'getdents', 'getdents64', 'getegid', 'getegid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32',
  'getgroups', 'getgroups32', 'getitimer', 'getpeername', 'getpgid', 'getpgrp', 'getpid',
  'getppid', 'getpriority', 'getrandom', 'getresgid', 'getresgid32', 'getresuid', 'getresuid32',
  'getrlimit', 'get_robust_list', 'getrusage', 'getsid', 'getsockname', 'getsockopt',
  'get_thread_area', 'gettid', 'gettimeofday', 'getuid', 'getuid32', 'getxattr',
  'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch', 'io_cancel', 'ioctl',
  'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'ioprio_get',
  'ioprio_set', 'io_setup', 'io_submit', 'ipc', 'kill', 'landlock_add_rule',
  'landlock_create_ruleset', 'landlock_restrict_self', 'lchown', 'lchown32', 'lgetxattr', 'link',
  'linkat', 'listen', 'listxattr', 'llistxattr', '_llseek', 'lremovexattr', 'lseek', 'lsetxattr',
  'lstat', 'lstat64', 'madvise', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore', 'mkdir',
  'mkdirat', 'mknod', 'mknodat', 'mlock', 'mlock2', 'mlockall', 'mmap', 'mmap2', 'mprotect',
  'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive', 'mq_timedreceive_time64',
  'mq_timedsend', 'mq_timedsend_time64', 'mq_unlink', 'mremap', 'msgctl', 'msgget', 'msgrcv',
  'msgsnd', 'msync', 'munlock', 'munlockall', 'munmap', 'name_to_handle_at', 'nanosleep',
  'newfstatat', '_newselect', 'open', 'openat', 'openat2', 'pause', 'pidfd_open',
  'pidfd_send_signal', 'pipe', 'pipe2', 'pkey_alloc', 'pkey_free', 'pkey_mprotect', 'poll',
  'ppoll', 'ppoll_time64', 'prctl', 'pread64', 'preadv', 'preadv2', 'prlimit64',
  'process_mrelease', 'pselect6', 'pselect6_time64', 'pwrite64', 'pwritev', 'pwritev2', 'read',
  'readahead', 'readlink', 'readlinkat', 'readv', 'recv', 'recvfrom', 'recvmmsg',
  'recvmmsg_time64', 'recvmsg', 'remap_file_pages', 'removexattr', 'rename', 'renameat',
  'renameat2', 'restart_syscall', 'rmdir', 'rseq', 'rt_sigaction', 'rt_sigpending',
  'rt_sigprocmask', 'rt_sigqueueinfo', 'rt_sigreturn', 'rt_sigsuspend', 'rt_sigtimedwait',
  'rt_sigtimedwait_time64', 'rt_tgsigqueueinfo', 'sched_getaffinity', 'sched_getattr',
  'sched_getparam', 'sched_get_priority_max', 'sched_get_priority_min', 'sched_getscheduler',
  'sched_rr_get_interval', 'sched_rr_get_interval_time64', 'sched_setaffinity', 'sched_setattr',
  'sched_setparam', 'sched_setscheduler', 'sched_yield', 'seccomp', 'select', 'semctl', 'semget',
  'semop', 'semtimedop', 'semtimedop_time64', 'send', 'sendfile', 'sendfile64', 'sendmmsg',
  'sendmsg', 'sendto', 'setfsgid', 'setfsgid32', 'setfsuid', 'setfsuid32', 'setgid', 'setgid32',
  'setgroups', 'setgroups32', 'setitimer', 'setpgid', 'setpriority', 'setregid', 'setregid32',
  'setresgid', 'setresgid32', 'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setrlimit',
  'set_robust_list', 'setsid', 'setsockopt', 'set_thread_area', 'set_tid_address', 'setuid',
  'setuid32', 'setxattr', 'shmat', 'shmctl', 'shmdt', 'shmget', 'shutdown', 'sigaltstack',
  'signalfd', 'signalfd4', 'sigprocmask', 'sigreturn', 'socketcall', 'socketpair', 'splice',
  'stat', 'stat64', 'statfs', 'statfs64', 'statx', 'symlink', 'symlinkat', 'sync',
  'sync_file_range', 'syncfs', 'sysinfo', 'tee', 'tgkill', 'time', 'timer_create', 'timer_delete',
  'timer_getoverrun', 'timer_gettime', 'timer_gettime64', 'timer_settime', 'timer_settime64',
  'timerfd_create', 'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime',
  'timerfd_settime64', 'times', 'tkill', 'truncate', 'truncate64', 'ugetrlimit', 'umask', 'uname',
  'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64', 'utimes', 'vfork', 'vmsplice',
  'wait4', 'waitid', 'waitpid', 'write', 'writev',
  // The source allows these on kernels >= 4.8 (where seccomp runs before ptrace can bypass it);
  // the agent needs a newer kernel anyway.
  'process_vm_readv', 'process_vm_writev', 'ptrace',
];

// The one departure: the source still allows io_uring_setup/enter/register to everyone. io_uring
// has been a steady source of kernel privilege escalations (CVE-2022-29582, CVE-2023-2598, ...),
// and later Docker and containerd defaults dropped it too; workloads fall back to epoll/aio.
const IO_URING = new Set(['io_uring_enter', 'io_uring_register', 'io_uring_setup']);

const GROUPS: readonly Group[] = [
  { names: ALLOWED_SYSCALLS.filter((n) => !IO_URING.has(n)) },
  // AF_VSOCK (40) reaches the hypervisor's sockets; everything else may be created.
  { names: ['socket'], args: [{ index: 0, value: 40, op: 'SCMP_CMP_NE' }] },
  // personality: only PER_LINUX (0), PER_LINUX32 (8), UNAME26 (0x20000), UNAME26|PER_LINUX32,
  // and the query (0xffffffff); not ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC and other ASLR tricks.
  ...[0, 8, 131072, 131080, 4294967295].map((v): Group => ({ names: ['personality'], args: [{ index: 0, value: v, op: 'SCMP_CMP_EQ' }] })),
  { names: ['sync_file_range2', 'swapcontext'], arches: ['ppc64le'] },
  { names: ['arm_fadvise64_64', 'arm_sync_file_range', 'sync_file_range2', 'breakpoint', 'cacheflush', 'set_tls'], arches: ['arm', 'arm64'] },
  { names: ['arch_prctl'], arches: ['amd64', 'x32'] },
  { names: ['modify_ldt'], arches: ['amd64', 'x32', 'x86'] },
  { names: ['s390_pci_mmio_read', 's390_pci_mmio_write', 's390_runtime_instr'], arches: ['s390', 's390x'] },
  { names: ['riscv_flush_icache'], arches: ['riscv64'] },
  { names: ['open_by_handle_at'], caps: ['CAP_DAC_READ_SEARCH'] },
  {
    names: [
      'bpf', 'clone', 'clone3', 'fanotify_init', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'lookup_dcookie', 'mount',
      'mount_setattr', 'move_mount', 'open_tree', 'perf_event_open', 'quotactl', 'quotactl_fd', 'setdomainname',
      'sethostname', 'setns', 'syslog', 'umount', 'umount2', 'unshare',
    ],
    caps: ['CAP_SYS_ADMIN'],
  },
  // Without CAP_SYS_ADMIN, clone only without namespace flags (s390 swaps clone's arguments).
  { names: ['clone'], args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }], notCaps: ['CAP_SYS_ADMIN'], notArches: ['s390', 's390x'] },
  { names: ['clone'], args: [{ index: 1, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }], notCaps: ['CAP_SYS_ADMIN'], arches: ['s390', 's390x'] },
  // clone3 passes its flags in a struct seccomp cannot read: ENOSYS makes libc fall back to clone.
  { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS, notCaps: ['CAP_SYS_ADMIN'] },
  { names: ['reboot'], caps: ['CAP_SYS_BOOT'] },
  { names: ['chroot'], caps: ['CAP_SYS_CHROOT'] },
  { names: ['delete_module', 'init_module', 'finit_module'], caps: ['CAP_SYS_MODULE'] },
  { names: ['acct'], caps: ['CAP_SYS_PACCT'] },
  { names: ['kcmp', 'pidfd_getfd', 'process_madvise', 'process_vm_readv', 'process_vm_writev', 'ptrace'], caps: ['CAP_SYS_PTRACE'] },
  { names: ['iopl', 'ioperm'], caps: ['CAP_SYS_RAWIO'] },
  { names: ['settimeofday', 'stime', 'clock_settime', 'clock_settime64'], caps: ['CAP_SYS_TIME'] },
  { names: ['vhangup'], caps: ['CAP_SYS_TTY_CONFIG'] },
  { names: ['get_mempolicy', 'mbind', 'set_mempolicy', 'set_mempolicy_home_node'], caps: ['CAP_SYS_NICE'] },
  { names: ['syslog'], caps: ['CAP_SYSLOG'] },
  { names: ['bpf'], caps: ['CAP_BPF'] },
  { names: ['perf_event_open'], caps: ['CAP_PERFMON'] },
];

// Go's GOARCH names (as the source uses) and libseccomp's architectures for each native one.
const ARCHES: Record<string, { goArch: string; scmp: string[] }> = {
  x64: { goArch: 'amd64', scmp: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'] },
  arm64: { goArch: 'arm64', scmp: ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'] },
};

/**
 * RuntimeDefault for a unit with these capabilities (OCI names, CAP_*) on this architecture
 * (Node's process.arch). Anything not allowed fails with EPERM, as in the source.
 */
export function runtimeDefaultProfile(capabilities: readonly string[], arch: string = process.arch): SeccompProfile {
  const a = ARCHES[arch];
  if (!a) throw new Error(`seccomp RuntimeDefault: architecture "${arch}" is not supported (amd64 and arm64 are)`);
  const caps = new Set(capabilities);
  const applies = (g: Group): boolean =>
    (g.caps ?? []).every((c) => caps.has(c)) &&
    !(g.notCaps ?? []).some((c) => caps.has(c)) &&
    (g.arches === undefined || g.arches.includes(a.goArch)) &&
    !(g.notArches ?? []).includes(a.goArch);
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures: a.scmp,
    syscalls: GROUPS.filter(applies).map((g) => ({
      names: [...g.names],
      action: g.action ?? 'SCMP_ACT_ALLOW',
      ...(g.errnoRet !== undefined ? { errnoRet: g.errnoRet } : {}),
      ...(g.args ? { args: g.args.map((x) => ({ ...x })) } : {}),
    })),
  };
}
