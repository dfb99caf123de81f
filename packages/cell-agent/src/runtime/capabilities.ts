// The default capability set of containerd and Docker; Kubernetes' "runtime default".
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

import { readFileSync } from 'node:fs';

// Every capability this kernel generation knows, in the kernel's numbering (index = bit).
export const ALL_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

/** Kubernetes writes capabilities without the CAP_ prefix ("NET_ADMIN"); OCI wants it. */
export function normalizeCapability(name: string): string {
  const up = name.trim().toUpperCase();
  return up.startsWith('CAP_') ? up : `CAP_${up}`;
}

/** The capabilities of a `CapBnd:` hex mask (as /proc/PID/status writes it). */
export function capabilitiesOfMask(hex: string): string[] {
  const mask = BigInt(`0x${hex}`);
  return ALL_CAPABILITIES.filter((_, bit) => (mask >> BigInt(bit)) & 1n);
}

let bounding: string[] | undefined;
/**
 * The agent's own bounding set: all a unit can ever hold. On a cell's VM that is every
 * capability; where the agent itself runs in a container (a local cell on a restricted host),
 * fewer, and asking runc for more fails the start ("unable to apply caps").
 */
export function agentBoundingSet(): string[] {
  if (bounding) return bounding;
  const m = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return (bounding = m ? capabilitiesOfMask(m[1]!) : [...ALL_CAPABILITIES]);
}

/**
 * The effective set for a unit: defaults minus drop, plus add. `privileged` and `add: [ALL]` mean
 * every capability the agent holds, as containerd gives them (its process's current set), not
 * every one the kernel knows.
 */
export function resolveCapabilities(opts: { add: string[]; drop: string[]; privileged: boolean }, all: readonly string[] = agentBoundingSet()): string[] {
  if (opts.privileged) return [...all];
  const drop = new Set(opts.drop.map(normalizeCapability));
  const dropAll = drop.has('CAP_ALL');
  const set = new Set(dropAll ? [] : DEFAULT_CAPABILITIES.filter((c) => !drop.has(c)));
  for (const a of opts.add.map(normalizeCapability)) {
    if (a === 'CAP_ALL') all.forEach((c) => set.add(c));
    else set.add(a);
  }
  return [...set];
}
