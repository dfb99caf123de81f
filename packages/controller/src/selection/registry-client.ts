// The one place the controller makes registry clients (today only to read image platforms for
// scheduling). Per-registry TLS, CAs and mirrors are the image puller's configuration: when that
// lands, this factory is what switches over to it, and nothing else in the controller changes.
import { DEFAULT_TRANSPORT, makeDispatcher, parseReference, RegistryClient, TokenCache, type RegistryAuth } from '@cello/image-puller';

export interface RegistryClientSettings {
  /** Registries spoken to over plain HTTP (host:port), as the agents' --insecure-registry; loopback ones always are (Docker's default). */
  plainHttp?: readonly string[];
  /** Attempts per request on 5xx/429/connection errors: few, a scheduling decision is waiting. */
  attempts?: number;
}

export type RegistryClientFactory = ((image: string, credentials: RegistryAuth | undefined, signal: AbortSignal) => RegistryClient) & {
  close(): Promise<void>;
};

export function createRegistryClientFactory(s: RegistryClientSettings = {}): RegistryClientFactory {
  const tokens = new TokenCache();
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
      tokens,
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
