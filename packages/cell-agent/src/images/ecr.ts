// ECR with the cell's own instance role (`ecr.mode: instance-profile`): for an image on ECR that
// the pod brought no credential for, the agent asks GetAuthorizationToken itself, signed with
// the role's credentials from instance metadata. The token never leaves the cell, is renewed
// before its 12 h run out (so a restart days later still pulls), and reads exactly what the
// cell's role may read. Everything else passes through untouched.
import { EcrTokenCache, ecrRegion } from '@cello/image-puller/ecr';
import type { Logger } from 'pino';
import type { ImdsClient } from '../cloud/imds.js';
import { instanceRoleCredentials } from '../cloud/instance-role.js';
import { ImagePullFailure, registryOf, type ImageService, type RegistryAuth } from './image-service.js';

export interface EcrInstanceRoleOptions {
  imds: ImdsClient;
  /** ECR API endpoint override (tests: moto). */
  endpoint?: string;
  log?: Logger;
}

/** `images`, with a token from the cell's role for ECR images pulled without credentials. */
export function withEcrInstanceRole(images: ImageService, o: EcrInstanceRoleOptions): ImageService & { close(): void } {
  const tokens = new EcrTokenCache({ ...(o.endpoint ? { endpoint: o.endpoint } : {}), clientConfig: { credentials: instanceRoleCredentials(o.imds), maxAttempts: 2 } });
  const auth = async (ref: string, given: RegistryAuth | undefined): Promise<RegistryAuth | undefined> => {
    const host = registryOf(ref);
    if (given || ecrRegion(host) === undefined) return given;
    try {
      const t = (await tokens.forHost(host))!;
      return { username: t.username, password: t.password };
    } catch (err) {
      o.log?.warn({ host, err: (err as Error).message }, "no ECR token with the cell's instance role");
      throw new ImagePullFailure(`${ref}: no ECR token with the cell's instance role (it needs ecr:GetAuthorizationToken): ${(err as Error).message}`, 'auth');
    }
  };
  return {
    cached: async (ref, opts) => images.cached(ref, { ...opts, auth: await auth(ref, opts?.auth) }),
    pull: async (ref, opts) => images.pull(ref, { ...opts, auth: await auth(ref, opts.auth) }),
    close: () => tokens.close(),
  };
}
