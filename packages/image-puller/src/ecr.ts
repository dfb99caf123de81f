// Amazon ECR registry tokens (what docker-credential-ecr-login does): GetAuthorizationToken
// gives, per region, a 12 h Basic credential `AWS:<password>` for every registry of that region
// the caller's principal may read. One cache serves both places that ask: the controller (its
// default credential chain, token sent to the pod's cell) and a cell agent in instance-profile
// mode (the cell's own role from instance metadata). Kept apart from the package's index so
// that only those who need ECR load the AWS SDK (`@cello/image-puller/ecr`).
import { ECRClient, GetAuthorizationTokenCommand, type ECRClientConfig } from '@aws-sdk/client-ecr';

/** `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`: the registries ECR serves. */
const ECR_HOST = /^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$/;

/** The region of an ECR registry host, or undefined for any other host. */
export function ecrRegion(host: string): string | undefined {
  return ECR_HOST.exec(host)?.[2];
}

export interface EcrToken {
  username: string;
  password: string;
  /** Epoch milliseconds. */
  expiresAt: number;
}

export interface EcrTokenCacheOptions {
  /** API endpoint override (tests: moto; EC2-compatible clouds). */
  endpoint?: string;
  /** Extra client settings, e.g. `credentials` (a cell's instance role) or `profile`. */
  clientConfig?: Partial<ECRClientConfig>;
  /** Builds the region's client (default: an ECRClient from the options above). */
  client?: (region: string) => ECRClient;
  /** Get a new token this long before the current one expires (default 1 h of its 12). */
  refreshBeforeMs?: number;
  now?: () => number;
}

export class EcrTokenCache {
  private readonly clients = new Map<string, ECRClient>();
  private readonly tokens = new Map<string, EcrToken>();
  private readonly inflight = new Map<string, Promise<EcrToken>>();
  private readonly now: () => number;
  private readonly refreshBeforeMs: number;

  constructor(private readonly o: EcrTokenCacheOptions = {}) {
    this.now = o.now ?? Date.now;
    this.refreshBeforeMs = o.refreshBeforeMs ?? 3600_000;
  }

  private client(region: string): ECRClient {
    let c = this.clients.get(region);
    if (c) return c;
    c = this.o.client?.(region) ?? new ECRClient({ region, ...(this.o.endpoint ? { endpoint: this.o.endpoint } : {}), ...this.o.clientConfig });
    this.clients.set(region, c);
    return c;
  }

  /** The region's token: the cached one until its refresh time, else a new one (one call at a time per region). */
  async token(region: string): Promise<EcrToken> {
    const t = this.tokens.get(region);
    if (t && this.now() < t.expiresAt - this.refreshBeforeMs) return t;
    const pending = this.inflight.get(region);
    if (pending) return pending;
    const p = (async () => {
      const out = await this.client(region).send(new GetAuthorizationTokenCommand({}));
      const data = out.authorizationData?.[0];
      if (!data?.authorizationToken) throw new Error(`ECR GetAuthorizationToken in ${region}: no authorization data in the answer`);
      const decoded = Buffer.from(data.authorizationToken, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) throw new Error(`ECR GetAuthorizationToken in ${region}: the token is not base64 of "user:password"`);
      const token = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), expiresAt: data.expiresAt?.getTime() ?? this.now() + 12 * 3600_000 };
      this.tokens.set(region, token);
      return token;
    })();
    this.inflight.set(region, p);
    try {
      return await p;
    } finally {
      this.inflight.delete(region);
    }
  }

  /** The token for an ECR host, or undefined when `host` is not ECR. Throws when ECR refuses. */
  forHost(host: string): Promise<EcrToken | undefined> {
    const region = ecrRegion(host);
    return region === undefined ? Promise.resolve(undefined) : this.token(region);
  }

  close(): void {
    for (const c of this.clients.values()) c.destroy();
    this.clients.clear();
  }
}
