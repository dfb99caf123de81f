// The controller's configuration: one YAML file, validated at start. Every error names the
// field (e.g. `warmPool[0].size: expected a number`), and every option is documented in
// packages/controller/README.md.
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseRegistryConfig, PullError, type RegistryConfig } from '@cello/image-puller';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseReference } from '@cello/image-puller';
import { kubernetesConfigSchema } from './k8s/config.js';
import { isLoopbackListen, policySchema } from './api/auth/index.js';
import { ConfigError } from './errors.js';

const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected HOST:PORT');

const timeouts = z
  .strictObject({
    createSeconds: z.number().positive().default(120),
    bootSeconds: z.number().positive().default(300),
    healthSeconds: z.number().positive().default(15),
    drainSlackSeconds: z.number().nonnegative().default(15),
    terminateSeconds: z.number().positive().default(120),
  })
  .prefault({});

/** An image reference as pods write them (busybox, registry:5000/team/app:1, ...@sha256:...). */
const imageReference = z.string().superRefine((v, ctx) => {
  try {
    parseReference(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

const localProvider = z.strictObject({
  kind: z.literal('local'),
  /** Directory with one subdirectory per cell. */
  root: z.string().min(1).default('/var/lib/cello/cells'),
  /** How to run the agent; default: node + @cello/cell-agent's dist/cli.js. */
  agentCommand: z.array(z.string().min(1)).min(1).optional(),
  agentArgs: z.array(z.string()).default([]),
  insecureRegistries: z.array(hostPort).default([]),
  network: z.enum(['auto', 'netns', 'host']).default('auto'),
  /** With a namespace per cell: masquerade the cells' traffic off the cello0 bridge, so pods reach what the host reaches. */
  outboundNAT: z.boolean().default(true),
  maxCells: z.number().int().positive().optional(),
});

const awsProvider = z.looseObject({
  kind: z.literal('aws'),
});

const gceProvider = z.looseObject({
  kind: z.literal('gce'),
});

const embeddedStore = z.strictObject({
  kind: z.literal('embedded'),
  dir: z.string().min(1).default('/var/lib/cello/store'),
  compactBytes: z.number().int().positive().optional(),
});

const etcdStore = z.strictObject({
  kind: z.literal('etcd'),
  endpoints: z.array(z.string().url()).min(1),
  prefix: z.string().optional(),
  requestTimeoutMs: z.number().int().positive().optional(),
  auth: z.strictObject({ username: z.string(), password: z.string() }).optional(),
  /** TLS to etcd (https:// endpoints): its CA, and the client certificate --client-cert-auth asks for. */
  tls: z
    .strictObject({ caFile: z.string().min(1), certFile: z.string().min(1).optional(), keyFile: z.string().min(1).optional() })
    .refine((t) => (t.certFile === undefined) === (t.keyFile === undefined), { message: 'certFile and keyFile go together (the client certificate and its key)' })
    .optional(),
});

export const configSchema = z.strictObject({
  /** Tags every instance; the garbage collector finds what this controller owns by it. */
  controllerId: z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'expected a DNS label (lowercase letters, digits, -)'),
  api: z
    .strictObject({
      listen: hostPort.default('127.0.0.1:7390'),
      /** Plaintext without credentials (callers are system:anonymous); loopback addresses only. */
      insecure: z.boolean().default(false),
      /** Extra DNS names / IPs on the API's serving certificate (its identity is what clients check). */
      serverNames: z.array(z.string().min(1)).default([]),
      /** Who may do what (README: "API authentication and authorization"). */
      policy: policySchema,
      /** At start, issue a system:masters certificate for `user` and write a cellctl config for it here (npm start). */
      adminCredentials: z
        .strictObject({
          file: z.string().min(1),
          /** 'admin': the local login name. */
          user: z.string().min(1).default('admin'),
          /** Not renewed in place (it is a file a person holds): re-issued at every start. */
          ttlSeconds: z
            .number()
            .int()
            .min(60)
            .max(365 * 86400)
            .default(30 * 86400),
        })
        .optional(),
      /** In a cluster (needs the kubernetes section): TokenReview for bearer tokens, SubjectAccessReview for pods. */
      kubernetes: z.strictObject({ tokenReview: z.boolean().default(false), subjectAccessReview: z.boolean().default(false) }).prefault({}),
    })
    .prefault({}),
  metrics: z.strictObject({ listen: hostPort.default('127.0.0.1:7391') }).prefault({}),
  log: z.strictObject({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info') }).prefault({}),
  store: z.discriminatedUnion('kind', [embeddedStore, etcdStore]).prefault({ kind: 'embedded' }),
  provider: z.discriminatedUnion('kind', [localProvider, awsProvider, gceProvider]).prefault({ kind: 'local' }),
  security: z
    .strictObject({
      /** insecure-dev: plaintext to agents (development only); mtls: the controller's CA. */
      mode: z.enum(['insecure-dev', 'mtls']).default('mtls'),
      /** File holding the key that encrypts the CA's private key at rest (32 bytes, base64 or hex). */
      encryptionKeyFile: z.string().optional(),
      /** Or an environment variable holding it. */
      encryptionKeyEnv: z.string().optional(),
      /** Lifetime of each cell's certificate; renewed in place once two thirds have passed. */
      cellCertificateTtlSeconds: z
        .number()
        .int()
        .min(5)
        .max(90 * 86400)
        .default(7 * 86400),
      /** Lifetime of the controller's own client certificate; renewed the same way. */
      controllerCertificateTtlSeconds: z
        .number()
        .int()
        .min(5)
        .max(365 * 86400)
        .default(7 * 86400),
      /** How often certificates are checked for renewal. */
      rotationCheckSeconds: z.number().min(0.2).max(3600).default(60),
    })
    .prefault({}),
  warmPool: z
    .array(
      z.strictObject({
        instanceType: z.string().min(1),
        size: z.number().int().nonnegative(),
        spot: z.boolean().default(false),
        /** Images its cells pull as soon as they are Ready, before any pod asks (docs/warm-pool.md). */
        prePull: z.array(imageReference).default([]),
        /** Pods of this type whose images are remembered (in memory) for pre-pulling; 0 turns that off. */
        recentPods: z.number().int().nonnegative().max(10_000).default(20),
        /** How many of those pods' most frequent images a warm cell pulls besides prePull. */
        recentImages: z.number().int().nonnegative().max(100).default(3),
      }),
    )
    .default([]),
  selection: z
    .strictObject({
      spot: z.enum(['never', 'preferred', 'required']).default('never'),
      agentOverhead: z.strictObject({ cpuMillis: z.number().int().nonnegative().default(100), memoryMiB: z.number().int().nonnegative().default(64) }).prefault({}),
      /**
       * Read each image's platforms from its registry when a pod is scheduled, so its cell gets an
       * architecture every image runs on (docs/architectures.md).
       */
      imagePlatforms: z
        .strictObject({
          enabled: z.boolean().default(true),
          /** Registries (host:port) read over plain HTTP; loopback registries always are, as Docker does. */
          plainHttpRegistries: z.array(hostPort).default([]),
          /** How long what a tag points at is trusted; content is cached by digest regardless. */
          tagTtlSeconds: z.number().nonnegative().default(60),
          /** Deadline of one image's lookup; past it the pod is Unschedulable (ImagePlatformsUnknown) and retried. */
          timeoutSeconds: z.number().positive().default(10),
          /** Registry reads at once. */
          concurrency: z.number().int().positive().default(8),
        })
        .prefault({}),
    })
    .prefault({}),
  timeouts,
  gc: z.strictObject({ intervalSeconds: z.number().positive().default(30) }).prefault({}),
  pods: z
    .strictObject({
      /** How long the cell of a finished pod stays (so its logs can be read). */
      retainFinishedSeconds: z.number().nonnegative().default(300),
      /** Cells a pod may lose before it is failed rather than started again. */
      maxCellFailures: z.number().int().nonnegative().default(5),
      /** Bytes of each container's log the controller keeps when a pod ends (the end of it), so it can be read after the cell is gone. 0: none. */
      keepLogBytes: z
        .number()
        .int()
        .nonnegative()
        .max(1024 * 1024)
        .default(64 * 1024),
      /** How long those logs are kept after the pod ended. */
      keepLogsSeconds: z
        .number()
        .nonnegative()
        .default(24 * 3600),
    })
    .prefault({}),
  /** The virtual node (docs/kubernetes.md); absent: not in a cluster. */
  kubernetes: kubernetesConfigSchema.optional(),
  /**
   * Per-registry CAs, client certificates, mirrors and rewrites, handed to every cell
   * (docs/registries.md); validated and its files read by @cello/image-puller's parseRegistryConfig.
   */
  registries: z.unknown().optional(),
});

export type Config = Omit<z.infer<typeof configSchema>, 'registries'> & { registries: RegistryConfig };

export { ConfigError };

function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || '(root)';
}

/** `baseDir`: where relative file names in the configuration (registries' caFile ...) are found. */
export function parseConfig(data: unknown, origin = 'config', baseDir = process.cwd()): Config {
  const r = configSchema.safeParse(data ?? {});
  if (!r.success) {
    const lines = r.error.issues.map((i) => {
      const path = [...i.path];
      if (i.code === 'unrecognized_keys') return `${origin}: ${fieldPath(path)}: unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')}`;
      return `${origin}: ${fieldPath(path)}: ${i.message}`;
    });
    throw new ConfigError(lines.join('\n'));
  }
  if (r.data.api.insecure && !isLoopbackListen(r.data.api.listen)) {
    throw new ConfigError(`${origin}: api.listen: ${r.data.api.listen} is not a loopback address; plaintext (api.insecure: true) is only allowed on 127.0.0.1, ::1 or localhost`);
  }
  if ((r.data.api.kubernetes.tokenReview || r.data.api.kubernetes.subjectAccessReview) && !r.data.kubernetes) {
    throw new ConfigError(`${origin}: api.kubernetes: TokenReview and SubjectAccessReview need the kubernetes section (its kubeconfig or service account)`);
  }
  if (r.data.security.mode === 'mtls' && !r.data.security.encryptionKeyFile && !r.data.security.encryptionKeyEnv) {
    throw new ConfigError(`${origin}: security.encryptionKeyFile: required when security.mode is mtls (or set security.encryptionKeyEnv)`);
  }
  let registries: RegistryConfig;
  try {
    registries = parseRegistryConfig(r.data.registries, { baseDir, field: 'registries' });
  } catch (err) {
    if (err instanceof PullError) throw new ConfigError(`${origin}: ${err.message}`);
    throw err;
  }
  return { ...r.data, registries };
}

export function loadConfig(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`${path}: ${(err as Error).message}`, { cause: err });
  }
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid YAML: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(data, path, dirname(path));
}
