import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writevSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { isIP } from 'node:net';
import { connect as tlsConnect, createSecureContext, rootCertificates, type ConnectionOptions } from 'node:tls';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { OffThreadSha256 } from './hasher.js';
import { parseChallenge, type RegistryAuth } from './auth.js';
import { PullError } from './errors.js';
import { MANIFEST_ACCEPT, MT } from './media.js';
import type { HostTransport } from './registry-config.js';

export interface TransportOptions {
  /** Attempts per request on 5xx/429/connection errors (first try included). */
  attempts: number;
  /** First backoff; doubles each attempt, with full jitter, capped at 10 s. */
  backoffMs: number;
  headersTimeoutMs: number;
  /** Longest silence while a body is streaming. */
  bodyTimeoutMs: number;
}

export const DEFAULT_TRANSPORT: TransportOptions = { attempts: 5, backoffMs: 200, headersTimeoutMs: 30_000, bodyTimeoutMs: 60_000 };

interface CachedToken {
  header: string;
  expiresAt: number;
}

/** Bearer/Basic authorizations, keyed by registry, scope and identity; shared by all pulls of a puller. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();
  get(key: string): string | undefined {
    const t = this.tokens.get(key);
    if (!t) return undefined;
    if (Date.now() >= t.expiresAt) {
      this.tokens.delete(key);
      return undefined;
    }
    return t.header;
  }
  set(key: string, header: string, ttlMs: number): void {
    this.tokens.set(key, { header, expiresAt: Date.now() + ttlMs });
  }
  delete(key: string): void {
    this.tokens.delete(key);
  }
}

export interface ManifestResponse {
  bytes: Buffer;
  mediaType: string;
  digest: string;
}

/** Bytes of a blob body gathered before one write to its file. */
const WRITE_BATCH = 1 << 20;

const RETRY_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);
const MAX_MANIFEST_BYTES = 8 << 20;
/** Token responses are a JWT or two and a few fields; real ones are a few KiB. */
export const MAX_TOKEN_BYTES = 1 << 20;

function isAbort(err: unknown): boolean {
  return err instanceof Error && (err.name === 'AbortError' || (err as { code?: string }).code === 'ABORT_ERR');
}

const PERMANENT = /^(CERT_|ERR_TLS_|ERR_SSL_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_|HOSTNAME_MISMATCH|ENOTFOUND)/;
const UNKNOWN_AUTHORITY = /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT)$/;
const CLIENT_CERT_REFUSED = /^ERR_SSL_.*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|HANDSHAKE_FAILURE)$/;

/** Errors no retry can fix: certificate problems, unknown hosts. */
function permanentCode(err: unknown): string | undefined {
  for (let e: unknown = err, i = 0; e instanceof Error && i < 4; e = e.cause, i++) {
    const code = (e as { code?: string }).code;
    if (code && PERMANENT.test(code)) return code;
  }
  return undefined;
}

/** A TLS failure in the words of the fix (the configuration field to set). */
function tlsAdvice(host: string, code: string): string {
  const at = `registries[${JSON.stringify(host)}]`;
  if (UNKNOWN_AUTHORITY.test(code)) return `: certificate signed by unknown authority; add the registry's CA (${at}.caPem or caFile)`;
  if (CLIENT_CERT_REFUSED.test(code)) return `: the registry refused the TLS handshake, it wants a client certificate it trusts (${at}.client)`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `: the certificate does not name ${host}`;
  return '';
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: string }).code;
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return `${code ? `${code} ` : ''}${err.message}${cause}`;
}

export function sha256Digest(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

export interface RegistryClientOptions {
  registry: string;
  repository: string;
  /** How this host is reached (plain HTTP, TLS settings); `dispatcher` was made for it. */
  hostTransport: HostTransport;
  dispatcher: Dispatcher;
  credentials: RegistryAuth | undefined;
  tokens: TokenCache;
  transport: TransportOptions;
  logger: Logger | undefined;
  signal: AbortSignal | undefined;
}

interface SendOptions {
  method?: 'GET' | 'HEAD';
  headers?: Record<string, string>;
}

/** One repository on one registry: manifests and blobs over the distribution v2 API. */
export class RegistryClient {
  private readonly origin: string;
  private readonly scope: string;
  private readonly tokenKey: string;

  constructor(private readonly o: RegistryClientOptions) {
    const host = o.registry === 'docker.io' ? 'registry-1.docker.io' : o.registry;
    this.origin = `${o.hostTransport.plainHttp ? 'http' : 'https'}://${host}`;
    this.scope = `repository:${o.repository}:pull`;
    // Keyed by the whole credential (hashed), not the user name: a wrong password must never
    // ride on the token a right one earned, or the shared-cache credential check means nothing.
    const who = o.credentials
      ? createHash('sha256')
          .update(JSON.stringify([o.credentials.username ?? '', o.credentials.password ?? '', o.credentials.identityToken ?? '']))
          .digest('hex')
      : '';
    this.tokenKey = `${o.registry}|${this.scope}|${who}`;
  }

  private backoff(attempt: number, retryAfter?: string): number {
    const ra = retryAfter ? Number(retryAfter) : NaN;
    if (Number.isFinite(ra) && ra >= 0) return Math.min(ra * 1000, 10_000);
    const cap = Math.min(this.o.transport.backoffMs * 2 ** attempt, 10_000);
    return cap / 2 + Math.random() * (cap / 2);
  }

  private async raw(url: string, method: string, headers: Record<string, string>): Promise<Dispatcher.ResponseData> {
    const u = new URL(url);
    return this.o.dispatcher.request({
      origin: u.origin,
      path: u.pathname + u.search,
      method: method as Dispatcher.HttpMethod,
      headers,
      signal: this.o.signal,
      headersTimeout: this.o.transport.headersTimeoutMs,
      bodyTimeout: this.o.transport.bodyTimeoutMs,
    });
  }

  /** GET/HEAD with auth challenges, redirects (Authorization dropped off-origin) and retries. */
  private async send(path: string, opts: SendOptions = {}): Promise<Dispatcher.ResponseData> {
    const method = opts.method ?? 'GET';
    let authTries = 0;
    let lastErr: unknown;
    let retryAfter: string | undefined;
    let diagnosed = false;
    for (let attempt = 0; attempt < this.o.transport.attempts; attempt++) {
      if (attempt > 0) await sleep(this.backoff(attempt - 1, retryAfter), undefined, { signal: this.o.signal });
      retryAfter = undefined;
      let url = `${this.origin}${path}`;
      const authHeader = this.o.tokens.get(this.tokenKey);
      let res: Dispatcher.ResponseData;
      try {
        const headers: Record<string, string> = { 'user-agent': 'cello-image-puller/0.1', ...opts.headers };
        if (authHeader) headers.authorization = authHeader;
        res = await this.raw(url, method, headers);
        for (let hops = 0; res.statusCode >= 300 && res.statusCode < 400 && res.headers.location; hops++) {
          if (hops >= 5) throw new PullError('network', `${this.o.registry}: too many redirects for ${path}`);
          await res.body.dump();
          const next = new URL(String(res.headers.location), url);
          if (next.origin !== new URL(url).origin) delete headers.authorization;
          url = next.toString();
          res = await this.raw(url, method, headers);
        }
      } catch (err) {
        if (err instanceof PullError) throw err;
        if (isAbort(err) || this.o.signal?.aborted) throw new PullError('network', `${this.o.registry}: aborted`, { cause: err });
        const permanent = permanentCode(err);
        if (permanent) {
          // Over HTTP/2 a refused client certificate arrives as the alert itself, whose OpenSSL
          // text adds nothing to the code and the advice (over HTTP/1.1, see tlsHandshakeError).
          const what = CLIENT_CERT_REFUSED.test(permanent) ? permanent : describe(err);
          throw new PullError('network', `${this.o.registry}: ${what}${tlsAdvice(this.o.registry, permanent)}`, { cause: err });
        }
        if (!diagnosed && !this.o.hostTransport.plainHttp && isHangUp(err)) {
          diagnosed = true;
          const code = await tlsHandshakeError(new URL(url), this.o.hostTransport);
          if (code) throw new PullError('network', `${this.o.registry}: ${code}${tlsAdvice(this.o.registry, code)}`, { cause: err });
        }
        lastErr = err;
        this.o.logger?.debug({ registry: this.o.registry, path, attempt, err: describe(err) }, 'request failed, retrying');
        continue;
      }
      if (res.statusCode === 401) {
        const challenge = parseChallenge(res.headers['www-authenticate']);
        await res.body.dump();
        if (authHeader) this.o.tokens.delete(this.tokenKey);
        if (authTries >= 1 && !authHeader) {
          throw new PullError('auth', `${this.o.registry}: unauthorized for ${this.o.repository} (credentials rejected)`);
        }
        if (authTries >= 2) throw new PullError('auth', `${this.o.registry}: unauthorized for ${this.o.repository}`);
        authTries++;
        await this.authorize(challenge);
        attempt--; // an auth round trip is not a failure
        continue;
      }
      if (RETRY_STATUS.has(res.statusCode)) {
        const ra = res.headers['retry-after'];
        retryAfter = typeof ra === 'string' ? ra : undefined;
        await res.body.dump();
        lastErr = new Error(`HTTP ${res.statusCode}`);
        this.o.logger?.debug({ registry: this.o.registry, path, status: res.statusCode, attempt }, 'retryable status');
        continue;
      }
      return res;
    }
    throw new PullError('network', `${this.o.registry}: ${path.split('/').slice(-2).join('/')} failed after ${this.o.transport.attempts} attempts: ${describe(lastErr)}`, {
      cause: lastErr,
    });
  }

  private async authorize(challenge: ReturnType<typeof parseChallenge>): Promise<void> {
    const creds = this.o.credentials;
    if (!challenge) throw new PullError('auth', `${this.o.registry}: 401 without a WWW-Authenticate challenge`);
    if (challenge.scheme === 'basic') {
      if (!creds?.username || creds.password === undefined) throw new PullError('auth', `${this.o.registry}: credentials required for ${this.o.repository}`);
      const b = Buffer.from(`${creds.username}:${creds.password}`).toString('base64');
      this.o.tokens.set(this.tokenKey, `Basic ${b}`, 24 * 3600_000);
      return;
    }
    if (challenge.scheme !== 'bearer') throw new PullError('unsupported', `${this.o.registry}: unsupported auth scheme ${challenge.scheme}`);
    const realm = challenge.params.realm;
    if (!realm || !/^https?:\/\//.test(realm)) throw new PullError('auth', `${this.o.registry}: bearer challenge without a usable realm`);
    if (creds && (creds.identityToken || creds.username)) this.checkRealm(new URL(realm));
    const scope = challenge.params.scope || this.scope;
    const service = challenge.params.service;
    let res: Dispatcher.ResponseData;
    try {
      if (creds?.identityToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'cello-image-puller', scope });
        if (service) form.set('service', service);
        const u = new URL(realm);
        res = await this.o.dispatcher.request({
          origin: u.origin,
          path: u.pathname + u.search,
          method: 'POST',
          signal: this.o.signal,
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form.toString(),
          headersTimeout: this.o.transport.headersTimeoutMs,
          bodyTimeout: this.o.transport.bodyTimeoutMs,
        });
      } else {
        const u = new URL(realm);
        if (service) u.searchParams.set('service', service);
        u.searchParams.set('scope', scope);
        const headers: Record<string, string> = {};
        if (creds?.username && creds.password !== undefined) headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
        res = await this.raw(u.toString(), 'GET', headers);
      }
    } catch (err) {
      if (isAbort(err)) throw new PullError('network', `${this.o.registry}: aborted`, { cause: err });
      throw new PullError('network', `${this.o.registry}: token service unreachable: ${describe(err)}`, { cause: err });
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump();
      throw new PullError('auth', `${this.o.registry}: token service refused ${creds ? 'the credentials' : 'anonymous access'} for ${scope}`);
    }
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new PullError(res.statusCode >= 500 ? 'network' : 'auth', `${this.o.registry}: token service answered HTTP ${res.statusCode}`);
    }
    const chunks: Buffer[] = [];
    let n = 0;
    try {
      for await (const c of res.body) {
        n += (c as Buffer).length;
        if (n > MAX_TOKEN_BYTES) {
          res.body.destroy();
          throw new PullError('auth', `${this.o.registry}: token service answered more than ${MAX_TOKEN_BYTES} bytes`);
        }
        chunks.push(c as Buffer);
      }
    } catch (err) {
      if (err instanceof PullError) throw err;
      throw new PullError('network', `${this.o.registry}: token service response cut: ${describe(err)}`, { cause: err });
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = JSON.parse(Buffer.concat(chunks, n).toString('utf8')) as typeof body;
    } catch (err) {
      throw new PullError('auth', `${this.o.registry}: token service answered something that is not JSON`, { cause: err });
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new PullError('auth', `${this.o.registry}: token service answered without a token`);
    const ttl = Math.max(10, Number(body.expires_in) || 60) * 1000;
    // Expire a little early so a token never dies in flight.
    this.o.tokens.set(this.tokenKey, `Bearer ${token}`, ttl - Math.min(5000, ttl / 10));
  }

  /**
   * Credentials go to a plain-HTTP token realm only when the registry itself is a configured
   * plain-HTTP registry on the same host: anywhere else they would cross the network in clear
   * text (a registry served over https sending them to http://, or to some other host), readable
   * and replayable by anyone on the path — or by whoever controls the registry's answer.
   */
  private checkRealm(realm: URL): void {
    if (realm.protocol !== 'http:') return;
    const registryHost = new URL(this.origin).hostname;
    const plainHttp = this.o.hostTransport.plainHttp;
    if (plainHttp && realm.hostname === registryHost) return;
    const why = plainHttp ? `a different host than the registry (${registryHost})` : 'a registry served over https';
    throw new PullError('auth', `${this.o.registry}: refusing to send credentials to the plain-HTTP token realm ${realm.origin} (${why}); the token service must use https`);
  }

  async getManifest(reference: string, expectDigest?: string): Promise<ManifestResponse> {
    const res = await this.send(`/v2/${this.o.repository}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT } });
    if (res.statusCode === 404) {
      await res.body.dump();
      throw new PullError('not-found', `${this.o.registry}/${this.o.repository}: manifest ${reference} not found`);
    }
    if (res.statusCode === 403) {
      await res.body.dump();
      throw new PullError('auth', `${this.o.registry}/${this.o.repository}: access to manifest ${reference} denied`);
    }
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new PullError('network', `${this.o.registry}/${this.o.repository}: manifest ${reference}: HTTP ${res.statusCode}`);
    }
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of res.body) {
      n += (c as Buffer).length;
      if (n > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new PullError('invalid', `${this.o.registry}/${this.o.repository}: manifest ${reference} exceeds ${MAX_MANIFEST_BYTES} bytes`);
      }
      chunks.push(c as Buffer);
    }
    const bytes = Buffer.concat(chunks);
    const digest = sha256Digest(bytes);
    if (expectDigest && digest !== expectDigest) {
      throw new PullError('integrity', `${this.o.registry}/${this.o.repository}: manifest digest ${digest} does not match ${expectDigest}`);
    }
    let mediaType = String(res.headers['content-type'] ?? '')
      .split(';')[0]!
      .trim();
    if (!mediaType || mediaType === 'application/json' || mediaType === 'text/plain') {
      try {
        const j = JSON.parse(bytes.toString('utf8')) as { mediaType?: string; schemaVersion?: number; manifests?: unknown };
        mediaType = j.mediaType ?? (j.schemaVersion === 1 ? MT.dockerSchema1 : j.manifests ? MT.ociIndex : MT.ociManifest);
      } catch {
        throw new PullError('invalid', `${this.o.registry}/${this.o.repository}: manifest ${reference} is not JSON`);
      }
    }
    return { bytes, mediaType, digest };
  }

  /** A small blob (the config) into memory, verified. */
  async getBlob(digest: string, maxBytes = MAX_MANIFEST_BYTES): Promise<Buffer> {
    const res = await this.send(`/v2/${this.o.repository}/blobs/${digest}`);
    await this.checkBlobStatus(res, digest, false);
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of res.body) {
      n += (c as Buffer).length;
      if (n > maxBytes) {
        res.body.destroy();
        throw new PullError('invalid', `${this.o.registry}/${this.o.repository}: blob ${digest} exceeds ${maxBytes} bytes`);
      }
      chunks.push(c as Buffer);
    }
    const b = Buffer.concat(chunks);
    if (sha256Digest(b) !== digest) throw new PullError('integrity', `${this.o.registry}/${this.o.repository}: blob ${digest} failed verification (got ${sha256Digest(b)})`);
    return b;
  }

  private async checkBlobStatus(res: Dispatcher.ResponseData, digest: string, ranged: boolean): Promise<void> {
    if (res.statusCode === 200 || (ranged && res.statusCode === 206)) return;
    await res.body.dump();
    if (res.statusCode === 404) throw new PullError('not-found', `${this.o.registry}/${this.o.repository}: blob ${digest} not found`);
    if (res.statusCode === 403) throw new PullError('auth', `${this.o.registry}/${this.o.repository}: access to blob ${digest} denied`);
    if (res.statusCode === 416) throw new PullError('integrity', `${this.o.registry}/${this.o.repository}: blob ${digest} is shorter than expected`);
    throw new PullError('network', `${this.o.registry}/${this.o.repository}: blob ${digest}: HTTP ${res.statusCode}`);
  }

  /**
   * Streams a blob into `file`, hashing as it goes; a transfer cut mid-way resumes with `Range`
   * from the last byte written (restarting from zero if the server ignores the range).
   */
  async fetchBlobToFile(digest: string, size: number | undefined, file: string, onBytes?: (done: number) => void): Promise<void> {
    const fd = openSync(file, 'w', 0o644);
    // Hashed on a worker thread: the main thread is busy with TLS and the unpacking (hasher.ts).
    let hash = new OffThreadSha256();
    let received = 0;
    let lastErr: unknown;
    try {
      for (let attempt = 0; ; attempt++) {
        if (attempt >= this.o.transport.attempts) {
          throw new PullError('network', `${this.o.registry}/${this.o.repository}: blob ${digest} failed after ${attempt} attempts: ${describe(lastErr)}`, { cause: lastErr });
        }
        if (attempt > 0) await sleep(this.backoff(attempt - 1), undefined, { signal: this.o.signal });
        const ranged = received > 0;
        const res = await this.send(`/v2/${this.o.repository}/blobs/${digest}`, ranged ? { headers: { range: `bytes=${received}-` } } : {});
        await this.checkBlobStatus(res, digest, ranged);
        if (ranged) {
          const cr = String(res.headers['content-range'] ?? '');
          const start = /^bytes (\d+)-/.exec(cr);
          if (res.statusCode !== 206 || !start || Number(start[1]) !== received) {
            this.o.logger?.debug({ digest }, 'server ignored Range; restarting blob from zero');
            ftruncateSync(fd, 0);
            hash.dispose();
            hash = new OffThreadSha256();
            received = 0;
            onBytes?.(0);
          }
        }
        // TLS hands the body over in records of at most 16 KiB: one write(2) per record cost more
        // CPU than the hashing. Batched to WRITE_BATCH (the unpacker follows the file that far).
        let batch: Buffer[] = [];
        let batchLen = 0;
        let written = received;
        const flush = (): void => {
          if (batchLen === 0) return;
          let off = 0;
          while (off < batchLen) off += writevSync(fd, off === 0 ? batch : [Buffer.concat(batch).subarray(off)], written + off);
          written += batchLen;
          batch = [];
          batchLen = 0;
          onBytes?.(written);
        };
        try {
          for await (const c of res.body) {
            const chunk = c as Buffer;
            if (size !== undefined && received + chunk.length > size) {
              res.body.destroy();
              throw new PullError('integrity', `${this.o.registry}/${this.o.repository}: blob ${digest} is longer than its descriptor's ${size} bytes`);
            }
            const behind = hash.update(chunk);
            batch.push(chunk);
            batchLen += chunk.length;
            received += chunk.length;
            if (batchLen >= WRITE_BATCH) flush();
            if (behind) await behind;
          }
          flush();
        } catch (err) {
          // What arrived is written and hashed: a resumed transfer continues after it.
          flush();
          if (err instanceof PullError) throw err;
          if (isAbort(err) || this.o.signal?.aborted) throw new PullError('network', `${this.o.registry}: aborted`, { cause: err });
          lastErr = err;
          this.o.logger?.debug({ digest, received, err: describe(err) }, 'blob transfer interrupted; resuming');
          continue;
        }
        if (size !== undefined && received < size) {
          lastErr = new Error(`transfer ended at ${received} of ${size} bytes`);
          continue;
        }
        break;
      }
    } catch (err) {
      hash.dispose();
      throw err;
    } finally {
      closeSync(fd);
    }
    const got = await hash.digest();
    if (got !== digest) throw new PullError('integrity', `${this.o.registry}/${this.o.repository}: blob ${digest} failed verification (got ${got})`);
  }
}

function tlsOptions(t: HostTransport): ConnectionOptions {
  return {
    // Node's `ca` replaces the system roots: keep them, as containerd adds to its pool.
    ...(t.caPem.length ? { ca: [...rootCertificates, ...t.caPem] } : {}),
    ...(t.client ? { cert: t.client.certPem, key: t.client.keyPem } : {}),
    ...(t.skipVerify ? { rejectUnauthorized: false } : {}),
  };
}

/**
 * One TLS context per setting, shared by every connection made with it: undici's connector
 * otherwise builds a context per connection, and loading the system roots with a private CA
 * costs about 46 ms of the main thread each time (4-5 connections per pull: 0.2 s).
 */
function connectOptions(t: HostTransport): ConnectionOptions {
  if (t.plainHttp) return {};
  const { rejectUnauthorized, ...context } = tlsOptions(t);
  return { secureContext: secureContextFor(t, context), ...(rejectUnauthorized === false ? { rejectUnauthorized } : {}) };
}

/** Node's native SecureContext: addCACert is what createSecureContext itself calls for each `ca`. */
interface NativeContext {
  addCACert?: (pem: string | Buffer) => void;
}

/**
 * A context trusting the system roots plus the private CAs. Handing Node the roots as a `ca`
 * list makes it parse ~140 PEM certificates again (58-88 ms of the main thread per pull, measured
 * here); a default context copies the roots Node parsed once into its own store, and only the
 * private CAs are parsed. Falls back to the `ca` list if Node's internals ever change.
 */
function secureContextFor(t: HostTransport, context: ConnectionOptions): ReturnType<typeof createSecureContext> {
  if (t.caPem.length === 0) return createSecureContext(context);
  const { ca: _all, ...rest } = context;
  const sc = createSecureContext(rest);
  const native = (sc as unknown as { context?: NativeContext }).context;
  if (typeof native?.addCACert !== 'function') return createSecureContext(context);
  for (const pem of t.caPem) native.addCACert(pem);
  return sc;
}

/** The server closed the connection before answering (a TLS server refusing our certificate looks like this to undici). */
function isHangUp(err: unknown): boolean {
  const e = err as { code?: string; socket?: { bytesRead?: number } };
  return (e.code === 'UND_ERR_SOCKET' && e.socket?.bytesRead === 0) || e.code === 'ECONNRESET';
}

/**
 * Why a TLS server hung up on us, if it was the handshake: undici reports only "other side
 * closed", while a handshake of our own hears the server's alert (e.g. bad certificate when it
 * wants a client certificate). Runs only after such a failure.
 */
export function tlsHandshakeError(url: URL, t: HostTransport, timeoutMs = 3000): Promise<string | undefined> {
  const hostname = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve) => {
    const s = tlsConnect({ host: hostname, port: Number(url.port || 443), ...(isIP(hostname) ? {} : { servername: hostname }), ...tlsOptions(t) });
    const done = (code?: string): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(code && PERMANENT.test(code) ? code : undefined);
    };
    const timer = setTimeout(() => done(), timeoutMs);
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code));
    // TLS 1.3 servers judge the client's certificate after the handshake: ask something to hear the verdict.
    s.on('secureConnect', () => s.write(`GET /v2/ HTTP/1.1\r\nhost: ${url.host}\r\nconnection: close\r\n\r\n`));
    s.on('data', () => done());
    s.on('close', () => done());
  });
}

/**
 * One undici Agent per distinct TLS setting (its connection pools are per origin inside it), made
 * once and reused by every request to the hosts that share the setting.
 */
export class DispatcherPool {
  private readonly agents = new Map<string, Agent>();

  get(t: HostTransport): Dispatcher {
    const key = t.plainHttp
      ? 'plain'
      : createHash('sha256')
          .update(JSON.stringify([t.caPem, t.client?.certPem, t.client?.keyPem, t.skipVerify]))
          .digest('hex');
    let a = this.agents.get(key);
    if (!a) {
      a = new Agent({
        connections: 16,
        keepAliveTimeout: 10_000,
        // HTTP/2 where the registry offers it (ALPN): Node's native h2 framing costs the client
        // about a quarter less CPU per byte than undici's HTTP/1.1 parser (bench/pull).
        allowH2: !t.plainHttp,
        connect: connectOptions(t),
      });
      this.agents.set(key, a);
    }
    return a;
  }

  async close(): Promise<void> {
    const all = [...this.agents.values()];
    this.agents.clear();
    await Promise.all(all.map((a) => a.close()));
  }
}
