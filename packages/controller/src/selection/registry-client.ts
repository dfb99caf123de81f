// The one place the controller makes registry clients (today only to read image platforms for
// scheduling). Per-registry TLS, CAs and mirrors are the image puller's configuration: when that
// lands, this factory is what switches over to it, and nothing else in the controller changes.
import { createHash } from 'node:crypto';
import { DEFAULT_TRANSPORT, makeDispatcher, parseReference, RegistryClient, TokenCache, type RegistryAuth } from '@cello/image-puller';

export interface RegistryClientSettings {
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
    const key = credentials ? createHash('sha256').update(JSON.stringify([credentials.username, credentials.password, credentials.identityToken])).digest('hex') : '';
    let t = tokens.get(key);
    if (!t) {
      if (tokens.size >= MAX_IDENTITIES) tokens.delete(tokens.keys().next().value!);
      t = new TokenCache();
      tokens.set(key, t);
    }
    return t;
  };
  let dispatcher: ReturnType<typeof makeDispatcher> | undefined;
  const transport = { ...DEFAULT_TRANSPORT, attempts: s.attempts ?? 2, headersTimeoutMs: 10_000, bodyTimeoutMs: 10_000 };
  const make = (image: string, credentials: RegistryAuth | undefined, signal: AbortSignal): RegistryClient => {
    const ref = parseReference(image);
    dispatcher ??= makeDispatcher(false);
    return new RegistryClient({
      registry: ref.registry,
      repository: ref.repository,
      plainHttp: (s.plainHttp?.includes(ref.registry) ?? false) || isLoopback(ref.registry),
      dispatcher,
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
      await dispatcher?.destroy();
      dispatcher = undefined;
    },
  });
}

function isLoopback(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
