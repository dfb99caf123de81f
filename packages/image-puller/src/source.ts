// One repository as the registry configuration says to reach it: its mirrors in order, then the
// upstream (or its rewrite target). A mirror that answers 404, 5xx, garbage or nothing is
// skipped for the next; the upstream's answer is final. Every byte is verified against the
// digests the resolved manifest names, so a mirror can make a pull slower, never different.
import type { Logger } from 'pino';
import type { RegistryAuth } from './auth.js';
import { PullError } from './errors.js';
import { endpointsFor, transportOf, type Capability, type Endpoint, type RegistryConfig } from './registry-config.js';
import { DEFAULT_TRANSPORT, DispatcherPool, RegistryClient, TokenCache, type ManifestResponse, type TransportOptions } from './registry.js';
import { parseReference, type Reference } from './reference.js';

/** What a pull reads from a repository (RegistryClient's reading surface). */
export interface ImageSource {
  getManifest(reference: string, expectDigest?: string): Promise<ManifestResponse>;
  getBlob(digest: string, maxBytes?: number): Promise<Buffer>;
  fetchBlobToFile(digest: string, size: number | undefined, file: string, onBytes?: (done: number) => void): Promise<void>;
}

export interface SourceOptions {
  registries: RegistryConfig;
  dispatchers: DispatcherPool;
  tokens: TokenCache;
  transport: TransportOptions;
  /** Credentials by the host actually asked: a mirror's are looked up by the mirror's host. */
  auth: ((host: string) => RegistryAuth | undefined) | undefined;
  logger: Logger | undefined;
  signal: AbortSignal | undefined;
}

/** A mirror gets fewer retries: the next endpoint is a better use of the time than backing off. */
const MIRROR_ATTEMPTS = 2;

interface Candidate {
  endpoint: Endpoint;
  client: RegistryClient;
}

export class MirroredSource implements ImageSource {
  private readonly candidates: Candidate[];

  constructor(
    registry: string,
    repository: string,
    private readonly o: SourceOptions,
  ) {
    this.candidates = endpointsFor(o.registries, registry, repository).map((endpoint) => {
      const t = transportOf(o.registries, endpoint.host);
      return {
        endpoint,
        client: new RegistryClient({
          registry: endpoint.host,
          repository: endpoint.repository,
          hostTransport: t,
          dispatcher: o.dispatchers.get(t),
          credentials: o.auth?.(endpoint.host),
          tokens: o.tokens,
          logger: o.logger,
          signal: o.signal,
          transport: endpoint.mirror ? { ...o.transport, attempts: Math.min(MIRROR_ATTEMPTS, o.transport.attempts) } : o.transport,
        }),
      };
    });
  }

  private async first<T>(capability: Capability, what: string, run: (c: RegistryClient) => Promise<T>): Promise<T> {
    const usable = this.candidates.filter((c) => c.endpoint.capabilities.includes(capability));
    for (let i = 0; i < usable.length; i++) {
      const { endpoint, client } = usable[i]!;
      try {
        return await run(client);
      } catch (err) {
        const last = i === usable.length - 1;
        if (last || !endpoint.mirror || this.o.signal?.aborted || !(err instanceof PullError)) throw err;
        this.o.logger?.warn({ mirror: endpoint.host, what, err: err.message }, 'mirror failed; trying the next endpoint');
      }
    }
    throw new PullError('invalid', `${what}: no endpoint with the ${capability} capability`);
  }

  /** By tag: an endpoint that may resolve; by digest: one that may pull (containerd's split). */
  getManifest(reference: string, expectDigest?: string): Promise<ManifestResponse> {
    const byDigest = expectDigest !== undefined || reference.startsWith('sha256:');
    return this.first(byDigest ? 'pull' : 'resolve', `manifest ${reference}`, (c) => c.getManifest(reference, expectDigest));
  }

  getBlob(digest: string, maxBytes?: number): Promise<Buffer> {
    return this.first('pull', `blob ${digest}`, (c) => c.getBlob(digest, maxBytes));
  }

  fetchBlobToFile(digest: string, size: number | undefined, file: string, onBytes?: (done: number) => void): Promise<void> {
    let wrote = false;
    return this.first('pull', `blob ${digest}`, async (c) => {
      // A mirror that failed part-way wrote bytes a reader may be following: say the transfer restarts.
      if (wrote) onBytes?.(0);
      return c.fetchBlobToFile(digest, size, file, (done) => {
        wrote ||= done > 0;
        onBytes?.(done);
      });
    });
  }
}

export interface RegistryReader {
  /** The repository of `ref` (mirrors, rewrites and TLS as configured); `ref`'s tag or digest is the caller's to ask for. */
  open(ref: string, opts?: { auth?: (host: string) => RegistryAuth | undefined; signal?: AbortSignal }): { source: ImageSource; reference: Reference };
  close(): Promise<void>;
}

/**
 * Reads manifests and blobs outside a pull (e.g. a scheduler reading an image index), through the
 * same configuration as the puller; connections and tokens are shared by every `open`.
 */
export function createRegistryReader(registries: RegistryConfig, o: { transport?: Partial<TransportOptions>; logger?: Logger } = {}): RegistryReader {
  const dispatchers = new DispatcherPool();
  const tokens = new TokenCache();
  const transport = { ...DEFAULT_TRANSPORT, ...o.transport };
  return {
    open(ref, opts = {}) {
      const reference = parseReference(ref);
      const source = new MirroredSource(reference.registry, reference.repository, {
        registries,
        dispatchers,
        tokens,
        transport,
        auth: opts.auth,
        logger: o.logger,
        signal: opts.signal,
      });
      return { source, reference };
    },
    close: () => dispatchers.close(),
  };
}
