// The GCE metadata server: plain GETs that carry Metadata-Flavor: Google (the server refuses
// requests without it, which keeps a redirected browser or proxy from reading it). Like IMDS,
// it is link-local and answers in milliseconds, so every request has a short deadline.

export const DEFAULT_GCE_METADATA_URL = 'http://metadata.google.internal';

export class GceMetadataClient {
  constructor(
    readonly baseUrl: string = DEFAULT_GCE_METADATA_URL,
    private readonly timeoutMs = 2000,
  ) {
    const u = new URL(baseUrl);
    if (u.protocol !== 'http:') throw new Error(`metadata URL ${baseUrl}: must be http:// (the GCE metadata server is plain HTTP)`);
  }

  /** The body at `path` (e.g. /computeMetadata/v1/instance/id), or undefined for 404. */
  async get(path: string): Promise<string | undefined> {
    const res = await fetch(new URL(path, this.baseUrl), { headers: { 'Metadata-Flavor': 'Google' }, signal: AbortSignal.timeout(this.timeoutMs) });
    if (res.status === 404) return undefined;
    if (!res.ok) throw new Error(`GCE metadata GET ${path}: HTTP ${res.status}`);
    return res.text();
  }
}
