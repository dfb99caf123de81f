// Configuration of the gce provider: the `provider: {kind: gce, ...}` section of the
// controller's YAML, validated at start with errors that name the field. Credentials are never
// configured here: Application Default Credentials find them (GOOGLE_APPLICATION_CREDENTIALS,
// gcloud's ADC file, workload identity, the metadata server of the controller's own VM).
import { z } from 'zod';

const resourceName = z.string().regex(/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/, 'must be a GCE resource name (lowercase letters, digits and hyphens, starting with a letter)');
const zone = z.string().regex(/^[a-z]+-[a-z]+\d+-[a-z]$/, 'must be a zone such as us-central1-a');
const cidr = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$|^[0-9a-fA-F:]+\/\d{1,3}$/, 'must be a CIDR such as 10.0.0.0/16');
const labelValue = z.string().regex(/^[a-z0-9_-]{0,63}$/, 'must be a GCE label value: at most 63 of lowercase letters, digits, _ and -');
const labelKey = z.string().regex(/^[a-z][a-z0-9_-]{0,62}$/, 'must be a GCE label key: a lowercase letter, then at most 62 of lowercase letters, digits, _ and -');

export const gceProviderConfigSchema = z
  .object({
    /** The project the cells run in. */
    project: z.string().regex(/^[a-z][-a-z0-9]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][-a-z0-9]{4,28}[a-z0-9]$/, 'must be a project ID such as my-project-123'),
    /** Zones to launch in, all of one region; tried in order for capacity. */
    zones: z
      .array(zone)
      .min(1)
      .refine((zs) => new Set(zs.map((z) => z.slice(0, z.lastIndexOf('-')))).size === 1, { message: "must all be in one region (capacity() reads that region's quotas)" }),
    /** The VPC network: a name (global/networks/NAME) or a URL or partial URL. */
    network: z.string().min(1).default('default'),
    /** The subnetwork in the zones' region: a name or a (partial) URL; the network's auto subnet when absent. */
    subnetwork: z.string().min(1).optional(),
    /** The cell image: a (partial) URL such as projects/P/global/images/NAME, or an image family (projects/P/global/images/family/F). */
    image: z
      .object({
        amd64: z.string().min(1).optional(),
        arm64: z.string().min(1).optional(),
      })
      .refine((i) => i.amd64 !== undefined || i.arm64 !== undefined, { message: 'needs amd64 and/or arm64: the cell image of each architecture to launch' }),
    /** Compute API endpoint override: tests (the GCE fake) and Private Service Connect endpoints. */
    endpoint: z.string().url().optional(),
    /** The service account cells run as (its email), with these scopes; none when absent. */
    serviceAccount: z
      .object({
        email: z.string().email(),
        scopes: z.array(z.string().url()).default(['https://www.googleapis.com/auth/cloud-platform']),
      })
      .strict()
      .optional(),
    /**
     * Which pods may run as another service account with the cello.io/gce-service-account
     * annotation (same scopes as serviceAccount). None by default; `*` matches any namespace or
     * email. The controller needs iam.serviceAccounts.actAs on each of them.
     */
    serviceAccounts: z
      .object({
        allowed: z
          .array(
            z
              .object({
                namespaces: z.array(z.string().min(1)).min(1, 'list at least one namespace (or "*")'),
                emails: z.array(z.string().min(1)).min(1, 'list at least one service account email (or "*")'),
              })
              .strict(),
          )
          .default([]),
      })
      .strict()
      .default({ allowed: [] }),
    /** Cells get an external IP (an ephemeral one-to-one NAT) only when asked. */
    externalIp: z.boolean().default(false),
    /** How the controller reaches agents: the cell's internal IP, or its external IP (needs externalIp). */
    addressType: z.enum(['internal', 'external']).default('internal'),
    bootDisk: z
      .object({
        sizeGb: z.number().int().min(10).max(65536).default(20),
        type: z.enum(['pd-balanced', 'pd-ssd', 'pd-standard', 'hyperdisk-balanced']).default('pd-balanced'),
      })
      .strict()
      .default({ sizeGb: 20, type: 'pd-balanced' }),
    /** Shielded VM: secure boot, vTPM, integrity monitoring. The image must support it (the Packer template's does). */
    shieldedVm: z.boolean().default(true),
    /**
     * A firewall rule per agent port that admits the controller to the cells (by network tag
     * `cellTag`) from these ranges and/or source tags; none is managed when both are empty.
     */
    firewall: z
      .object({
        cellTag: resourceName.default('cello-cell'),
        allowFromCidrs: z.array(cidr).default([]),
        allowFromTags: z.array(resourceName).default([]),
        /** A rule admitting pod traffic between cells (by the cell tag), for networks without an allow-internal rule. */
        allowBetweenCells: z.boolean().default(false),
      })
      .strict()
      .default({ cellTag: 'cello-cell', allowFromCidrs: [], allowFromTags: [], allowBetweenCells: false }),
    spot: z
      .object({
        /** Launch Spot VMs unless the pod says otherwise. */
        default: z.boolean().default(false),
        /** When no zone has Spot capacity (or Spot quota), launch standard VMs instead, zone by zone. */
        fallbackToStandard: z.boolean().default(false),
      })
      .strict()
      .default({ default: false, fallbackToStandard: false }),
    /** A (type, zone, model) that reported no capacity is skipped for this long. */
    capacityBackoffSeconds: z.number().int().min(0).default(300),
    /** The longest a launch or delete waits for its operation. */
    operationTimeoutSeconds: z.number().int().min(1).max(3600).default(300),
    /** Machine types offered to selection (globs allowed); the whole catalog when absent. */
    machineTypes: z.array(z.string().min(1)).optional(),
    /**
     * Custom machine types offered beside the predefined ones (FAMILY-custom-VCPUS-MEMORY_MB),
     * one per family x vcpus x memoryGiBPerVcpu that GCE accepts; selection takes one when it is
     * the cheapest fit. Priced per vCPU and GiB from the price file's customHourly. None when absent.
     */
    customMachineTypes: z
      .object({
        families: z.array(z.enum(['e2', 'n2', 'n2d'])).min(1),
        vcpus: z.array(z.number().int().min(2).max(80)).min(1).default([2, 4, 8]),
        memoryGiBPerVcpu: z.array(z.number().min(0.5).max(8)).min(1).default([1, 2, 3]),
      })
      .strict()
      .optional(),
    /** Replacement price file (the format of data/gce-prices.json). */
    pricesFile: z.string().min(1).optional(),
    /** Read machine types live with machineTypes.aggregatedList (cached); false uses the bundled snapshot only. */
    liveCatalog: z.boolean().default(true),
    /** Extra labels on every cell instance. */
    extraLabels: z.record(labelKey, labelValue).default({}),
  })
  .strict()
  .refine((c) => c.addressType !== 'external' || c.externalIp, { message: 'addressType external needs externalIp: true', path: ['addressType'] });

export type GceProviderConfig = z.infer<typeof gceProviderConfigSchema>;
export type GceProviderConfigInput = z.input<typeof gceProviderConfigSchema>;

/** Validates the section; the error names the field, e.g. `provider.zones.0`. */
export function parseGceProviderConfig(input: unknown, path = 'provider'): GceProviderConfig {
  const r = gceProviderConfigSchema.safeParse(input);
  if (!r.success) {
    const msgs = r.error.issues.map((i) => `${[path, ...i.path.map(String)].join('.')}: ${i.message}`);
    throw new Error(`invalid configuration: ${msgs.join('; ')}`);
  }
  return r.data;
}

/** The region of the configured zones. */
export function regionOf(cfg: Pick<GceProviderConfig, 'zones'>): string {
  const z = cfg.zones[0]!;
  return z.slice(0, z.lastIndexOf('-'));
}

/** Pod annotations the gce provider honours (passed by the core in LaunchRequest.options). */
export const ANNOTATIONS = {
  spot: 'cello.io/spot',
  bootDiskGb: 'cello.io/gce-boot-disk-gb',
  serviceAccount: 'cello.io/gce-service-account',
} as const;

/**
 * Labels: how the controller finds what it owns whatever happened to its store. GCE label
 * values allow only [a-z0-9_-], so the exact tags (controller ID, cell ID, pod) are kept in the
 * `cello-tags` metadata item and the labels carry a lowercase, label-safe form for filtering.
 */
export const LABELS = {
  controller: 'cello-controller',
  cell: 'cello-cell',
  pod: 'cello-pod',
} as const;

export const METADATA_KEYS = {
  /** The cell's bootstrap (cell-bootstrap/v1), read by the agent's first boot. */
  userData: 'user-data',
  /** The exact LaunchRequest tags, JSON. */
  tags: 'cello-tags',
  agentPort: 'cello-agent-port',
} as const;
