// A cell provider boots and ends the machines that cells run on: a local cell-agent process,
// or an EC2 instance. The controller core uses only this interface; every implementation
// passes the same contract tests (test/providers/contract.ts).

import { CelloError } from '../errors.js';

export interface InstanceType {
  name: string; // e.g. "t3.small", or "local.small" for the local provider
  vcpus: number;
  memoryMiB: number;
  gpus: number;
  gpuType?: string;
  /** Burstable types: sustained CPU share per vCPU (0.2 = 20%); undefined when not burstable. */
  baselineCpuFraction?: number;
  onDemandHourlyUsd: number;
  spotHourlyUsd?: number;
  arch: 'amd64' | 'arm64';
}

export interface LaunchRequest {
  cellId: string;
  instanceType: string;
  spot: boolean;
  /** Tags carried by the instance: controller ID, cell ID, pod namespace/name. */
  tags: Record<string, string>;
  /** What the cell needs to bootstrap: CA certificate, agent config, one-time token. No private key. */
  bootstrap: CellBootstrapData;
  /** Per-pod overrides from annotations (instance profile, root volume size, ...). */
  options?: Record<string, string>;
}

export interface CellBootstrapData {
  caCertPem: string;
  token: string;
  tokenExpiresAt: string; // RFC 3339
  controllerId: string;
  cellId: string;
  agentPort: number;
  agentConfig?: Record<string, unknown>;
}

export interface LaunchedInstance {
  instanceId: string;
  zone?: string;
  spot: boolean;
}

export interface InstanceInfo {
  instanceId: string;
  state: 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated' | 'unknown';
  /** host:port where the agent listens, once known. */
  agentAddress?: string;
  tags: Record<string, string>;
  instanceType: string;
  launchedAt?: Date;
  spot: boolean;
  zone?: string;
}

/**
 * Thrown by launch when this type (or type+zone) has no capacity: the controller tries the next
 * candidate, for any other error it fails the cell. A launch that throws it leaves no instance.
 */
export class CapacityError extends CelloError {
  constructor(
    message: string,
    readonly instanceType: string,
    readonly zone?: string,
  ) {
    super('ResourceExhausted', message);
  }
}

/** A launch of a type the provider's fixed catalogue does not have (a caller's mistake, not capacity). */
export class UnknownInstanceTypeError extends CelloError {
  constructor(
    message: string,
    readonly instanceType: string,
  ) {
    super('InvalidArgument', message);
  }
}

/**
 * What the provider may run and what is counted against that now: the cloud account's limits
 * (every instance in it counts, not only this controller's), or the local host's resources.
 */
export interface ProviderCapacity {
  /** Most instances at once, and how many are running or starting. */
  instances: { limit: number; used: number };
  /** The vCPU quota and vCPUs in use, when the provider has one. */
  vcpus?: { limit: number; used: number };
  /** CPUs that every cell shares (one host): compressible, so offered whole and no limit on cells. */
  sharedCpus?: number;
  /** Memory cells can have and memory in use, when the provider has such a limit (a host). */
  memoryMiB?: { limit: number; used: number };
  /** Where the figures come from, e.g. "host" or "ec2:DescribeAccountAttributes". */
  source: string;
}

export interface CellProvider {
  readonly name: string; // "local", "aws", ...
  /**
   * True when a launched cell must be bootstrapped with the one-time token from its
   * CellBootstrapData (the controller signs the agent's CSR) before it is Ready; false or
   * absent when the provider installs the cell's certificate itself (local cells).
   */
  readonly needsBootstrap?: boolean;
  /**
   * Pod annotations that take effect when the instance is launched (its IAM role, its disk):
   * the reconciler passes them in LaunchRequest.options, and a pod that sets one never takes a
   * warm cell, which was launched without them.
   */
  readonly launchAnnotations?: readonly string[];
  /** Why this provider will not launch a cell for this pod (a rule of its configuration, named); undefined: it may. */
  refusePod?(pod: { namespace: string; annotations: Record<string, string> }): string | undefined;
  /** The instance types this provider can launch, with specs and prices. */
  instanceTypes(): Promise<InstanceType[]>;
  /**
   * The architectures it has a cell image for: a type of any other is never launched, whatever
   * its price. Absent: every architecture among its instance types.
   */
  architectures?(): Promise<Array<InstanceType['arch']>>;
  launch(req: LaunchRequest): Promise<LaunchedInstance>;
  /** Batched: one call for many instances. Unknown IDs are absent from the result. */
  describe(instanceIds: string[]): Promise<InstanceInfo[]>;
  /** Every instance carrying this controller ID tag, for garbage collection after a store wipe. */
  listOwned(controllerId: string): Promise<InstanceInfo[]>;
  terminate(instanceIds: string[]): Promise<void>;
  /**
   * Limits and usage, read fresh on each call (the caller caches); absent when unknown. Every
   * provider here has it, and the contract checks that its launches count against it.
   */
  capacity?(): Promise<ProviderCapacity>;
  /**
   * Removes what the provider made for this controller's cells and no live cell uses any more
   * (gce: agent firewall rules); returns what it removed. Called after instance GC.
   */
  collectUnused?(controllerId: string): Promise<string[]>;
  close(): Promise<void>;
}
