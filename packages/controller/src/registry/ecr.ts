// Amazon ECR images pull with a token the controller gets (GetAuthorizationToken, the SDK's
// default credential chain): one per region, valid 12 h for every registry of that region the
// controller's principal may read, kept until `refreshBeforeMs` before it expires. The token
// reaches a cell only for a pod whose images are on ECR, as the credential for that host. (With
// `ecr.mode: instance-profile` the cell asks for its own with its role: cell-agent images/ecr.ts.)
import { EcrTokenCache, ecrRegion, type EcrToken, type EcrTokenCacheOptions } from '@cello/image-puller/ecr';
import type { Logger } from 'pino';
import { DockerKeyring, imageRepository } from './keyring.js';

export { ecrRegion };

export interface EcrTokensOptions extends EcrTokenCacheOptions {
  profile?: string;
  log?: Logger;
}

export class EcrTokens {
  private readonly cache: EcrTokenCache;

  constructor(private readonly o: EcrTokensOptions = {}) {
    this.cache = new EcrTokenCache({ ...o, clientConfig: { ...(o.profile ? { profile: o.profile } : {}), ...o.clientConfig } });
  }

  /** The region's token: the cached one until its refresh time, else a new one. */
  token(region: string): Promise<EcrToken> {
    return this.cache.token(region);
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
    this.cache.close();
  }
}
