// The one place the controller makes registry clients (today only to read image platforms for
// scheduling), with the same per-registry transport as the cells (the `registries:` block: plain
// HTTP, CAs, client certificates). Platforms are read from the upstream registry itself, never
// through mirrors: a mirror may lag behind the tag the cell will pull.
import { createHash } from 'node:crypto';
import { DEFAULT_TRANSPORT, DispatcherPool, parseReference, RegistryClient, TokenCache, type HostTransport, type RegistryAuth, type RegistryConfig } from '@cello/image-puller';

export interface RegistryClientSettings {
  /** Per-registry transport, as the cells get it. */
  registries?: RegistryConfig;
  /** Registries spoken to over plain HTTP (host:port), as the agents' --insecure-registry; loopback ones always are (Docker's default). */
  plainHttp?: readonly string[];
  /** Attempts per request on 5xx/429/connection errors: few, a scheduling decision is waiting. */
  attempts?: number;
}

const MAX_IDENTITIES = 1000;

export type RegistryClientFactory = ((image: string, credentials: RegistryAuth | undefined, signal: AbortSignal) => RegistryClient) & {
  close(): Promise<void>;
};

export function createRegistryClientFactory(s: RegistryClientSettings = {}): RegistryClientFactory {
  // One token cache per set of credentials: RegistryClient keys cached authorizations by user
  // name only, so a shared cache would let a wrong password ride on a right one's token.
  const tokens = new Map<string, TokenCache>();
  const tokensFor = (credentials: RegistryAuth | undefined): TokenCache => {
    const key = credentials
      ? createHash('sha256')
          .update(JSON.stringify([credentials.username, credentials.password, credentials.identityToken]))
          .digest('hex')
      : '';
    let t = tokens.get(key);
    if (!t) {
      if (tokens.size >= MAX_IDENTITIES) tokens.delete(tokens.keys().next().value!);
      t = new TokenCache();
      tokens.set(key, t);
    }
    return t;
  };
  let dispatchers: DispatcherPool | undefined;
  const transport = { ...DEFAULT_TRANSPORT, attempts: s.attempts ?? 2, headersTimeoutMs: 10_000, bodyTimeoutMs: 10_000 };
  const make = (image: string, credentials: RegistryAuth | undefined, signal: AbortSignal): RegistryClient => {
    const ref = parseReference(image);
    dispatchers ??= new DispatcherPool();
    const configured = s.registries?.[ref.registry];
    const hostTransport: HostTransport = {
      // A configured registry is reached as configured (a loopback registry may well speak TLS).
      plainHttp: (configured?.plainHttp ?? false) || (s.plainHttp?.includes(ref.registry) ?? false) || (!configured && isLoopback(ref.registry)),
      caPem: configured?.caPem ?? [],
      ...(configured?.client ? { client: configured.client } : {}),
      skipVerify: configured?.skipVerify ?? false,
    };
    return new RegistryClient({
      registry: ref.registry,
      repository: ref.repository,
      hostTransport,
      dispatcher: dispatchers.get(hostTransport),
      credentials,
      tokens: tokensFor(credentials),
      transport,
      logger: undefined,
      signal,
    });
  };
  return Object.assign(make, {
    close: async () => {
      // Lookups have deadlines of their own; nothing worth waiting for is left at close.
      await dispatchers?.close();
      dispatchers = undefined;
    },
  });
}

function isLoopback(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
