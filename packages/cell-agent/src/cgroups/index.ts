import { existsSync } from 'node:fs';
import type { CgroupDriver } from './driver.js';
import { CgroupV1Driver } from './v1.js';
import { CgroupV2Driver } from './v2.js';

export type { CgroupDriver, CgroupStats, UnitLimits } from './driver.js';
export { CgroupV1Driver, CgroupV2Driver };

export type CgroupMode = 'v1' | 'v2' | 'hybrid';

/** unified (v2 only), legacy (v1 only) or hybrid (v1 controllers plus a v2 mount). */
export function detectCgroupMode(root = '/sys/fs/cgroup'): CgroupMode {
  if (existsSync(`${root}/cgroup.controllers`)) return 'v2';
  if (existsSync(`${root}/unified/cgroup.controllers`)) return 'hybrid';
  return 'v1';
}

/** The driver for this host: on hybrid hosts the controllers (and so the limits) live in v1. */
export function hostCgroupDriver(root = '/sys/fs/cgroup'): CgroupDriver {
  return detectCgroupMode(root) === 'v2' ? new CgroupV2Driver(root) : new CgroupV1Driver(root);
}
