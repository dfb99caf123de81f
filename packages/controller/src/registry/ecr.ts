// Amazon ECR images pull with a token the controller gets (GetAuthorizationToken, the SDK's
// default credential chain): one per region, valid 12 h for every registry of that region the
// controller's principal may read, kept until `refreshBeforeMs` before it expires. The token
// reaches a cell only for a pod whose images are on ECR, as the credential for that host.
import { ECRClient, GetAuthorizationTokenCommand, type ECRClientConfig } from '@aws-sdk/client-ecr';
import type { Logger } from 'pino';
import { DockerKeyring, imageRepository } from './keyring.js';

/** `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`: the registries ECR serves. */
const ECR_HOST = /^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$/;

export function ecrRegion(host: string): string | undefined {
  return ECR_HOST.exec(host)?.[2];
}

interface Token {
  username: string;
  password: string;
  expiresAt: number;
}

export interface EcrTokensOptions {
  /** API endpoint override (tests: moto), as the EC2 client's. */
  endpoint?: string;
  profile?: string;
  /** Get a new token this long before the current one expires (default 1 h of its 12). */
  refreshBeforeMs?: number;
  clientConfig?: Partial<ECRClientConfig>;
  /** Builds the region's client (default: an ECRClient from the options above). */
  client?: (region: string) => ECRClient;
  now?: () => number;
  log?: Logger;
}

export class EcrTokens {
  private readonly clients = new Map<string, ECRClient>();
  private readonly tokens = new Map<string, Token>();
  private readonly inflight = new Map<string, Promise<Token>>();
  private readonly now: () => number;
  private readonly refreshBeforeMs: number;

  constructor(private readonly o: EcrTokensOptions = {}) {
    this.now = o.now ?? Date.now;
    this.refreshBeforeMs = o.refreshBeforeMs ?? 3600_000;
  }

  private client(region: string): ECRClient {
    let c = this.clients.get(region);
    if (!c && this.o.client) this.clients.set(region, (c = this.o.client(region)));
    if (!c) {
      c = new ECRClient({
        region,
        ...(this.o.endpoint ? { endpoint: this.o.endpoint } : {}),
        ...(this.o.profile ? { profile: this.o.profile } : {}),
        ...this.o.clientConfig,
      });
      this.clients.set(region, c);
    }
    return c;
  }

  /** The region's token: the cached one until its refresh time, else a new one (one call at a time per region). */
  async token(region: string): Promise<Token> {
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

  /**
   * Credentials for the ECR images among `images` (none when there are none, or when a token
   * cannot be had: the pull is then tried and fails with the registry's reason).
   */
  async keyrings(images: string[]): Promise<DockerKeyring[]> {
    const hosts = [...new Set(images.map((i) => imageRepository(i).host).filter((h) => ecrRegion(h) !== undefined))];
    if (hosts.length === 0) return [];
    const keyring = new DockerKeyring();
    for (const host of hosts) {
      const region = ecrRegion(host)!;
      try {
        const t = await this.token(region);
        keyring.add([{ server: host, username: t.username, password: t.password, identityToken: '' }]);
      } catch (err) {
        this.o.log?.warn({ region, host, err: (err as Error).message }, 'no ECR token; pulling without credentials');
      }
    }
    return [keyring];
  }

  close(): void {
    for (const c of this.clients.values()) c.destroy();
  }
}
