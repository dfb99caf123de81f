// What the reconciler's parts share: its options, the record cache, events, metrics, and the
// two ways to ask for another look at a key (now, or after a per-key back-off).
import type { ClusterDNS } from '@cello/proto/cell';
import type { DockerKeyring } from '../registry/keyring.js';
import type { Store } from '../store/store.js';
import type { CellProvider, InstanceType } from '../providers/provider.js';
import type { Events } from '../cells/schema.js';
import type { Timeouts } from '../cells/state.js';
import type { SavedLogsOptions } from '../logs/saved.js';
import type { Overhead, SpotPreference } from '../selection/selection.js';
import type { Logger } from '../obs/logger.js';
import type { Metrics } from '../obs/metrics.js';
import type { AgentAccess } from '../agents/pool.js';
import type { SecretBox } from '../security/secret-box.js';
import type { BootstrapTokens } from '../security/tokens.js';
import type { RecordCache } from './record-cache.js';
import type { PrePull } from './pre-pull.js';
import type { ImagePlatformReader } from '../selection/image-platforms.js';

export const TAG_CONTROLLER = 'cello.io/controller-id';
export const TAG_CELL = 'cello.io/cell-id';
export const TAG_POD = 'cello.io/pod';

export interface WarmPoolEntry {
  instanceType: string;
  size: number;
  spot?: boolean;
  /** Images its cells pull as soon as they are Ready (reconcile/pre-pull.ts). */
  prePull?: string[];
  /** Pods of this type whose images are remembered (in memory) for pre-pulling; 0: none. */
  recentPods?: number;
  /** How many of their most frequent images a warm cell pulls besides prePull. */
  recentImages?: number;
}

/** Bootstraps a cell that needs it (remote providers): prove the token, sign its CSR, install. */
export type BootstrapFn = (args: { address: string; token: string; cellId: string; caPem: string }) => Promise<void>;

export interface ReconcilerOptions {
  store: Store;
  provider: CellProvider;
  controllerId: string;
  agents: AgentAccess;
  log: Logger;
  metrics?: Metrics;
  warmPool?: WarmPoolEntry[];
  timeouts?: Partial<Timeouts>;
  overhead?: Overhead;
  defaultSpot?: SpotPreference;
  /** Seconds a finished pod's cell is kept (for logs) before it is released. */
  retainFinishedSeconds?: number;
  /** Cells a pod may lose before it is failed instead of rescheduled. */
  maxCellFailures?: number;
  /** The logs kept when a pod ends (logs/saved.ts); default 64 KiB per container for 24 h. */
  savedLogs?: SavedLogsOptions;
  gcIntervalSeconds?: number;
  tickMs?: number;
  concurrency?: number;
  /**
   * The controller's `registries:` (CAs, client certificates, mirrors, rewrites) as
   * ConfigureRegistries JSON, sent to every cell before it is Ready; absent when there are none.
   */
  cellRegistriesJson?: string;
  /** Agent port reported in bootstrap data (remote providers). */
  agentPort?: number;
  bootstrap?: BootstrapFn;
  caCertPem?: () => Promise<string>;
  /** Seals/opens the secrets kept in pod records (absent: plaintext, insecure-dev without a key). */
  secretBox?: SecretBox;
  /**
   * Outstanding bootstrap tokens, hashed in the store. With these (and secretBox) a cell's token
   * is issued here, kept in its record only sealed, checked before it is presented again, and
   * consumed once the cell has its certificate — so a restarted controller can finish the
   * bootstrap of a cell an earlier one launched.
   */
  tokens?: BootstrapTokens;
  /** The cluster's DNS for pods' resolv.conf (in a cluster; absent: pods use the cell's resolver). */
  clusterDNS?: () => ClusterDNS;
  /** Streams the cluster's Services to every live cell (in a cluster). */
  serviceFeed?: { start(cellId: string, address: string): void; stop(cellId: string): void; stopAll(): void };
  /**
   * Reads each image's platforms from its registry when a pod is scheduled, so its cell has an
   * architecture the images run on. Absent: images are not consulted (the node selector and the
   * provider's cell images still are).
   */
  imagePlatforms?: ImagePlatformReader;
  /** Renews cells' certificates before expiry (mTLS); checked on every tick. */
  renewer?: { check(cells: Iterable<{ id: string; address: string }>): void; forget(cellId: string): void };
  /**
   * Registry credentials the controller itself holds for these images (e.g. ECR tokens), used
   * after the pod's own imagePullSecrets.
   */
  registryKeyrings?: (images: string[]) => Promise<DockerKeyring[]>;
}

export interface ReconcileContext {
  readonly o: ReconcilerOptions;
  readonly t: Timeouts;
  readonly cache: RecordCache;
  readonly events: Events;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** When this controller started: cells created before it may have been launched by an earlier one. */
  readonly startedAt: number;
  /** What warm cells pre-pull, and the hits when pods land on them. */
  readonly prePull: PrePull;
  /** The provider's instance types (read at start). */
  types(): InstanceType[];
  /** Queues `pod:<ns/name>` or `cell:<id>` for a reconcile. */
  enqueue(key: string): void;
  /**
   * Queues the key again after a per-key exponential back-off starting at `baseMs`; the back-off
   * resets once a reconcile of the key finishes without asking for another retry.
   */
  retryLater(key: string, baseMs: number): void;
  /** Queues the key once, `ms` from now (a pod waiting out its launch back-off). */
  enqueueAfter(key: string, ms: number): void;
  /**
   * Records an event without making the reconcile wait for it: events are for people reading
   * `describe`, and waiting on each one cost every state change a second store commit.
   */
  note(e: Parameters<Events['record']>[0]): Promise<void>;
}
