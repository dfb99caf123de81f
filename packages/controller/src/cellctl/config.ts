// cellctl's configuration, kubeconfig-style: clusters (controller address, CA, trust domain),
// users (client certificate and key, or a bearer token) and contexts pairing them, in one YAML
// file. Found at --config, else $CELLO_CONFIG, else ~/.cello/config; `controller issue-user`
// and `npm start` write it. Certificates and keys are inline (base64 *-data) or file paths.
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { z } from 'zod';
import type { ApiClientCredentials } from '../api/auth/client.js';
import { ConfigError } from '../errors.js';

export const CONFIG_ENV = 'CELLO_CONFIG';
export const defaultConfigPath = () => join(homedir(), '.cello', 'config');

const cluster = z.strictObject({
  server: z.string().min(1),
  'trust-domain': z.string().min(1).default('cello'),
  'certificate-authority-data': z.string().optional(),
  'certificate-authority': z.string().optional(),
  /** Plaintext (a controller with api.insecure on loopback); never the default. */
  insecure: z.boolean().optional(),
});
const user = z.strictObject({
  'client-certificate-data': z.string().optional(),
  'client-certificate': z.string().optional(),
  'client-key-data': z.string().optional(),
  'client-key': z.string().optional(),
  token: z.string().optional(),
  'token-file': z.string().optional(),
});
const named = <T extends z.ZodType>(key: string, schema: T) => z.strictObject({ name: z.string().min(1), [key]: schema } as Record<string, z.ZodType>);

export const cellctlConfigSchema = z.strictObject({
  apiVersion: z.literal('cello.io/v1').default('cello.io/v1'),
  kind: z.literal('Config').default('Config'),
  'current-context': z.string().default(''),
  clusters: z.array(named('cluster', cluster)).default([]),
  users: z.array(named('user', user)).default([]),
  contexts: z.array(named('context', z.strictObject({ cluster: z.string().min(1), user: z.string().min(1), namespace: z.string().optional() }))).default([]),
});

type Cluster = z.infer<typeof cluster>;
type User = z.infer<typeof user>;
export interface CellctlConfig {
  apiVersion: 'cello.io/v1';
  kind: 'Config';
  'current-context': string;
  clusters: { name: string; cluster: Cluster }[];
  users: { name: string; user: User }[];
  contexts: { name: string; context: { cluster: string; user: string; namespace?: string } }[];
}

export function configPath(flag?: string): string {
  return flag || process.env[CONFIG_ENV] || defaultConfigPath();
}

export function readConfig(path: string): CellctlConfig | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError(`${path}: ${(err as Error).message}`);
  }
  const r = cellctlConfigSchema.safeParse(parseYaml(text) ?? {});
  if (!r.success) {
    throw new ConfigError(r.error.issues.map((i) => `${path}: ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n'));
  }
  return r.data as CellctlConfig;
}

export interface ResolvedContext {
  name: string;
  server: string;
  namespace?: string;
  /** Undefined: plaintext (cluster.insecure). */
  credentials?: ApiClientCredentials;
}

/** The context to use (`name`, else current-context), with every file it names read. */
export function resolveContext(cfg: CellctlConfig, path: string, name?: string): ResolvedContext {
  const ctxName = name || cfg['current-context'];
  if (!ctxName) throw new ConfigError(`${path}: no current-context; pick one with --context or \`cellctl config use-context NAME\``);
  const ctx = cfg.contexts.find((c) => c.name === ctxName);
  if (!ctx) throw new ConfigError(`${path}: no context named "${ctxName}" (have: ${cfg.contexts.map((c) => c.name).join(', ') || 'none'})`);
  const cl = cfg.clusters.find((c) => c.name === ctx.context.cluster)?.cluster;
  if (!cl) throw new ConfigError(`${path}: context "${ctxName}" names cluster "${ctx.context.cluster}", which is not in clusters`);
  const us = cfg.users.find((u) => u.name === ctx.context.user)?.user;
  if (!us) throw new ConfigError(`${path}: context "${ctxName}" names user "${ctx.context.user}", which is not in users`);
  const base = dirname(path);
  const field = (data: string | undefined, file: string | undefined, what: string): string | undefined => {
    if (data) return Buffer.from(data, 'base64').toString('utf8');
    if (!file) return undefined;
    const p = isAbsolute(file) ? file : resolve(base, file);
    try {
      return readFileSync(p, 'utf8');
    } catch (err) {
      throw new ConfigError(`${path}: ${what}: ${(err as Error).message}`);
    }
  };
  const out: ResolvedContext = { name: ctxName, server: cl.server, ...(ctx.context.namespace ? { namespace: ctx.context.namespace } : {}) };
  if (cl.insecure) return out;
  const caPem = field(cl['certificate-authority-data'], cl['certificate-authority'], `cluster ${ctx.context.cluster}: certificate-authority`);
  if (!caPem) throw new ConfigError(`${path}: cluster "${ctx.context.cluster}": certificate-authority-data (or certificate-authority) is required`);
  const certPem = field(us['client-certificate-data'], us['client-certificate'], `user ${ctx.context.user}: client-certificate`);
  const keyPem = field(us['client-key-data'], us['client-key'], `user ${ctx.context.user}: client-key`);
  const token = us.token ?? field(undefined, us['token-file'], `user ${ctx.context.user}: token-file`)?.trim();
  if (!!certPem !== !!keyPem) throw new ConfigError(`${path}: user "${ctx.context.user}": client-certificate and client-key go together`);
  out.credentials = { caPem, trustDomain: cl['trust-domain'], ...(certPem ? { certPem, keyPem: keyPem! } : {}), ...(token ? { token } : {}) };
  return out;
}

/**
 * Adds (or replaces) one cluster, user and context and makes the context current; the rest of
 * an existing file stays. Written 0600 through a temporary file, so a reader never sees half.
 */
export function upsertCredentials(
  path: string,
  e: { context: string; server: string; trustDomain: string; caPem: string; user: string; certPem: string; keyPem: string; namespace?: string },
): void {
  const cfg: CellctlConfig = readConfig(path) ?? (cellctlConfigSchema.parse({}) as CellctlConfig);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const put = <T extends { name: string }>(list: T[], item: T) => {
    const i = list.findIndex((x) => x.name === item.name);
    if (i >= 0) list[i] = item;
    else list.push(item);
  };
  put(cfg.clusters, { name: e.context, cluster: { server: e.server, 'trust-domain': e.trustDomain, 'certificate-authority-data': b64(e.caPem) } });
  put(cfg.users, { name: `${e.user}@${e.context}`, user: { 'client-certificate-data': b64(e.certPem), 'client-key-data': b64(e.keyPem) } });
  put(cfg.contexts, { name: e.context, context: { cluster: e.context, user: `${e.user}@${e.context}`, ...(e.namespace ? { namespace: e.namespace } : {}) } });
  cfg['current-context'] = e.context;
  writeConfig(path, cfg);
}

/** Writes the whole file, 0600, through a temporary file. */
export function writeConfig(path: string, cfg: CellctlConfig): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `# cellctl configuration (written by the Cello controller; see packages/controller/README.md)\n${stringify(cfg)}`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/** The configuration with keys, certificates and tokens shown as DATA+OMITTED (cellctl config view). */
export function redacted(cfg: CellctlConfig): CellctlConfig {
  const hide = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, /-data$|^token$/.test(k) ? 'DATA+OMITTED' : v])) as T;
  return { ...cfg, clusters: cfg.clusters.map((c) => ({ ...c, cluster: hide(c.cluster) })), users: cfg.users.map((u) => ({ ...u, user: hide(u.user) })) };
}
