// Who may use a cached image. The blob cache is shared by every pod on a cell (and, with
// --image-cache, by every cell on a machine), so an image one pod pulled with its registry
// credentials is on disk for the next pod too. As the kubelet's "ensure secret pulled images",
// a pod may use a cached image without asking the registry only if the image was pulled
// anonymously, or with the same credentials it presents; otherwise the registry is asked, with
// this pod's credentials (or none), for that very manifest first. Grants are per repository and
// digest: the same bytes public in one repository say nothing about a private copy in another.
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { RegistryAuth } from './image-service.js';

interface Entry {
  /** Pulled (or verified) without credentials: anyone may use it. */
  anonymous?: boolean;
  /** Hashes of credentials that pulled or verified it. */
  credentials?: string[];
}

export class ImageAccess {
  private readonly byDigest: Record<string, Entry>;

  /** `file`: where grants are kept across agent restarts (the cell's state dir); memory only when undefined. */
  constructor(private readonly file: string | undefined) {
    let loaded: Record<string, Entry> = {};
    if (file) {
      try {
        loaded = JSON.parse(readFileSync(file, 'utf8')) as Record<string, Entry>;
      } catch {
        loaded = {}; // none yet (or torn): images are verified again, which is safe
      }
    }
    this.byDigest = loaded;
  }

  private static key(auth: RegistryAuth | undefined): string | undefined {
    if (!auth || (!auth.username && !auth.password && !auth.identityToken)) return undefined;
    return createHash('sha256')
      .update(JSON.stringify([auth.username ?? '', auth.password ?? '', auth.identityToken ?? '']))
      .digest('hex');
  }

  /** Whether a pod presenting `auth` (for the image's registry) may use `repository`@`digest` from the cache as is. */
  allowed(repository: string, digest: string, auth: RegistryAuth | undefined): boolean {
    const e = this.byDigest[`${repository}@${digest}`];
    if (!e) return false;
    if (e.anonymous) return true;
    const k = ImageAccess.key(auth);
    return k !== undefined && (e.credentials ?? []).includes(k);
  }

  /** Records that the registry served `repository`@`digest` to `auth` (or to anyone, when undefined). */
  grant(repository: string, digest: string, auth: RegistryAuth | undefined): void {
    if (this.allowed(repository, digest, auth)) return;
    const e = (this.byDigest[`${repository}@${digest}`] ??= {});
    const k = ImageAccess.key(auth);
    if (k === undefined) e.anonymous = true;
    else e.credentials = [...(e.credentials ?? []), k];
    if (!this.file) return;
    writeFileSync(`${this.file}.tmp`, JSON.stringify(this.byDigest), { mode: 0o600 });
    renameSync(`${this.file}.tmp`, this.file);
  }
}
