// Per-registry configuration, shaped like containerd's hosts.toml (docs/registries.md): for each
// registry host its transport (plain HTTP, extra CAs, a client certificate, skip_verify), the
// mirrors tried before it, or a rewrite that sends its references to another host. A mirror's
// or a rewrite target's own transport is configured under that host's own key, so every host
// is described in exactly one place.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { PullError } from './errors.js';

const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;
const host = z.string().regex(HOST, 'expected a registry host, HOST or HOST:PORT (no scheme, no path)');
const prefix = z.string().regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/, 'expected repository path components, e.g. mirror/dockerhub');
const oneOrMany = z.union([z.string().min(1), z.array(z.string().min(1))]).transform((v) => (Array.isArray(v) ? v : [v]));

export const CAPABILITIES = ['pull', 'resolve'] as const;
export type Capability = (typeof CAPABILITIES)[number];

const mirrorSchema = z.strictObject({
  host,
  /** Repository path prefix on the mirror: `library/x` is asked for as `PREFIX/library/x`. */
  prefix: prefix.optional(),
  /** resolve: tags to digests; pull: manifests by digest and blobs (containerd's meaning). */
  capabilities: z
    .array(z.enum(CAPABILITIES))
    .min(1)
    .default([...CAPABILITIES]),
});

const clientSchema = z
  .strictObject({
    certPem: z.string().min(1).optional(),
    keyPem: z.string().min(1).optional(),
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
  })
  .refine((c) => (c.certPem === undefined) !== (c.certFile === undefined), { message: 'give the client certificate as exactly one of certPem or certFile' })
  .refine((c) => (c.keyPem === undefined) !== (c.keyFile === undefined), { message: 'give the client key as exactly one of keyPem or keyFile' });

const hostSchema = z
  .strictObject({
    /** Speak plain HTTP to this host (the agent's --insecure-registry HOST shorthand). */
    plainHttp: z.boolean().default(false),
    /** Extra CA certificates (PEM) trusted for this host, besides the system's. */
    caPem: oneOrMany.optional(),
    caFile: oneOrMany.optional(),
    /** A client certificate for registries that ask for one (mTLS). */
    client: clientSchema.optional(),
    /** Do not verify the host's certificate at all (containerd's skip_verify). */
    skipVerify: z.boolean().default(false),
    /** Tried in order before this host; on 404, 5xx or no answer the next one, then this host. */
    mirrors: z.array(mirrorSchema).default([]),
    /** Every reference to this host goes to another one instead (no fallback). */
    rewrite: z.strictObject({ host, prefix: prefix.optional() }).optional(),
  })
  .refine((h) => !(h.rewrite && h.mirrors.length > 0), {
    message: "rewrite and mirrors exclude each other (configure mirrors under the rewrite target's host)",
    path: ['rewrite'],
  });

export const registriesSchema = z.record(host, hostSchema);
/** The configuration as written (files not yet read). */
export type RegistriesInput = z.input<typeof registriesSchema>;

export interface Mirror {
  host: string;
  prefix?: string;
  capabilities: Capability[];
}

/** How to reach one host; contents only, never paths, so it can travel to another machine. */
export interface HostTransport {
  plainHttp: boolean;
  caPem: string[];
  client?: { certPem: string; keyPem: string };
  skipVerify: boolean;
}

export interface HostConfig extends HostTransport {
  mirrors: Mirror[];
  rewrite?: { host: string; prefix?: string };
}

/** Registry host -> its configuration, validated and with every file read. */
export type RegistryConfig = Record<string, HostConfig>;

const DEFAULT_TRANSPORT: HostTransport = { plainHttp: false, caPem: [], skipVerify: false };

/** `registries["reg:5000"].mirrors[0].host`: hosts in brackets (they hold dots and colons), fields dotted. */
function fieldPath(root: string, path: readonly PropertyKey[]): string {
  return path.reduce<string>((s, p, i) => s + (typeof p === 'number' ? `[${p}]` : i === 0 ? `[${JSON.stringify(String(p))}]` : `.${String(p)}`), root);
}

function invalid(field: string, message: string): PullError {
  return new PullError('invalid', `${field}: ${message}`);
}

function readPem(field: string, file: string, baseDir: string | undefined): string {
  if (baseDir === undefined) throw invalid(field, 'files are not read here: give the PEM inline (caPem, client.certPem, client.keyPem)');
  try {
    return readFileSync(resolve(baseDir, file), 'utf8');
  } catch (err) {
    throw invalid(field, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** The bundle itself, once every certificate in it parses. */
function checkCertificates(field: string, bundle: string): string {
  const blocks = bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) throw invalid(field, 'expected PEM certificates (-----BEGIN CERTIFICATE-----)');
  for (const b of blocks) {
    try {
      new X509Certificate(b);
    } catch (err) {
      throw invalid(field, `not a valid certificate: ${(err as Error).message}`);
    }
  }
  return bundle;
}

/**
 * Validates a `registries` block and reads the files it names (relative to `baseDir`). Every
 * error names its field, e.g. `registries["reg:5000"].client.keyFile: cannot read k.pem: ENOENT`.
 */
/** `noFiles`: the configuration came over the wire, so caFile/certFile/keyFile are refused, not read. */
export function parseRegistryConfig(input: unknown, opts: { baseDir?: string; field?: string; noFiles?: boolean } = {}): RegistryConfig {
  const root = opts.field ?? 'registries';
  const parsed = registriesSchema.safeParse(input ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    // A bad key's own reason is one level down (zod reports "Invalid key in record" above it).
    const reason = issue.code === 'invalid_key' ? (issue.issues[0]?.message ?? issue.message) : issue.message;
    throw invalid(fieldPath(root, issue.path), reason);
  }
  const baseDir = opts.noFiles ? undefined : (opts.baseDir ?? process.cwd());
  const out: RegistryConfig = {};
  for (const [name, h] of Object.entries(parsed.data)) {
    const at = `${root}[${JSON.stringify(name)}]`;
    const many = (field: string, n: number, i: number): string => `${at}.${field}${n > 1 ? `[${i}]` : ''}`;
    const caPem = [
      ...(h.caPem ?? []).map((pem, i, all) => checkCertificates(many('caPem', all.length, i), pem)),
      ...(h.caFile ?? []).map((f, i, all) => checkCertificates(many('caFile', all.length, i), readPem(many('caFile', all.length, i), f, baseDir))),
    ];
    const cfg: HostConfig = {
      plainHttp: h.plainHttp,
      caPem,
      skipVerify: h.skipVerify,
      mirrors: h.mirrors.map((m) => ({ host: m.host, capabilities: m.capabilities, ...(m.prefix ? { prefix: m.prefix } : {}) })),
    };
    if (h.client) {
      const c = h.client;
      const certField = `${at}.client.${c.certPem !== undefined ? 'certPem' : 'certFile'}`;
      const keyField = `${at}.client.${c.keyPem !== undefined ? 'keyPem' : 'keyFile'}`;
      const certPem = checkCertificates(certField, c.certPem ?? readPem(certField, c.certFile!, baseDir));
      const keyPem = c.keyPem ?? readPem(keyField, c.keyFile!, baseDir);
      try {
        createPrivateKey(keyPem);
      } catch {
        // The reason from OpenSSL could quote the key; say only that it is not one.
        throw invalid(keyField, 'not a PEM private key');
      }
      cfg.client = { certPem, keyPem };
    }
    if ((cfg.caPem.length > 0 || cfg.client || cfg.skipVerify) && cfg.plainHttp) throw invalid(at, 'plainHttp has no TLS: drop caPem/caFile/client/skipVerify, or plainHttp');
    if (h.rewrite) cfg.rewrite = { host: h.rewrite.host, ...(h.rewrite.prefix ? { prefix: h.rewrite.prefix } : {}) };
    out[name] = cfg;
  }
  return out;
}

/** A JSON or YAML file whose `registries:` block is the configuration (the agent's and the CLI's --registry-config). */
export function loadRegistryConfig(file: string): RegistryConfig {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8')); // YAML is a superset of JSON
  } catch (err) {
    throw new PullError('invalid', `--registry-config ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc) || !('registries' in doc)) {
    throw new PullError('invalid', `--registry-config ${file}: expected a document with a "registries:" map (registry host -> settings)`);
  }
  const unknown = Object.keys(doc).filter((k) => k !== 'registries');
  if (unknown.length) throw new PullError('invalid', `--registry-config ${file}: unknown key ${JSON.stringify(unknown[0])} (only "registries")`);
  return parseRegistryConfig((doc as { registries: unknown }).registries, { baseDir: dirname(resolve(file)) });
}

/** Adds the all-or-nothing shorthands (`--insecure-registry H`: plain HTTP; `--insecure`: skip verification) to a configuration. */
export function withShorthands(cfg: RegistryConfig, s: { plainHttp?: string[]; skipVerify?: string[] }): RegistryConfig {
  const out: RegistryConfig = { ...cfg };
  const entry = (h: string): HostConfig => (out[h] = { ...(out[h] ?? { ...DEFAULT_TRANSPORT, mirrors: [] }) });
  for (const h of s.plainHttp ?? []) entry(h).plainHttp = true;
  for (const h of s.skipVerify ?? []) if (!out[h]?.plainHttp) entry(h).skipVerify = true;
  return out;
}

export function transportOf(cfg: RegistryConfig, host: string): HostTransport {
  const h = cfg[host];
  if (!h) return DEFAULT_TRANSPORT;
  return { plainHttp: h.plainHttp, caPem: h.caPem, skipVerify: h.skipVerify, ...(h.client ? { client: h.client } : {}) };
}

/** One place a repository can be fetched from: a mirror, or the (possibly rewritten) upstream. */
export interface Endpoint {
  host: string;
  /** The repository's path on this host. */
  repository: string;
  capabilities: readonly Capability[];
  mirror: boolean;
}

/** Where to look for `registry/repository`, in order: its mirrors, then the upstream (or its rewrite target). */
export function endpointsFor(cfg: RegistryConfig, registry: string, repository: string): Endpoint[] {
  const h = cfg[registry];
  if (h?.rewrite) {
    const repo = h.rewrite.prefix ? `${h.rewrite.prefix}/${repository}` : repository;
    return [{ host: h.rewrite.host, repository: repo, capabilities: CAPABILITIES, mirror: false }];
  }
  const mirrors = (h?.mirrors ?? []).map((m): Endpoint => ({
    host: m.host,
    repository: m.prefix ? `${m.prefix}/${repository}` : repository,
    capabilities: m.capabilities,
    mirror: true,
  }));
  return [...mirrors, { host: registry, repository, capabilities: CAPABILITIES, mirror: false }];
}
