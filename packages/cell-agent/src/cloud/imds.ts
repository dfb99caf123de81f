// EC2 instance metadata, IMDSv2 only: a PUT for a session token, then GETs that carry it.
// (Instances are launched with HttpTokens=required, so IMDSv1 would be refused anyway.)
// Every request has a deadline; the metadata service is link-local and answers in
// milliseconds, so a slow answer means something is wrong and the caller should retry.

export const DEFAULT_IMDS_URL = 'http://169.254.169.254';
const TOKEN_TTL_SECONDS = 21600;

export class ImdsClient {
  private token: { value: string; until: number } | undefined;
  constructor(
    readonly baseUrl: string = DEFAULT_IMDS_URL,
    private readonly timeoutMs = 2000,
  ) {
    const u = new URL(baseUrl);
    if (u.protocol !== 'http:') throw new Error(`metadata URL ${baseUrl}: must be http:// (IMDS is plain HTTP on a link-local address)`);
  }

  private async sessionToken(): Promise<string> {
    if (this.token && this.token.until > Date.now()) return this.token.value;
    const res = await fetch(new URL('/latest/api/token', this.baseUrl), {
      method: 'PUT',
      headers: { 'x-aws-ec2-metadata-token-ttl-seconds': String(TOKEN_TTL_SECONDS) },
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (!res.ok) throw new Error(`IMDSv2 token: HTTP ${res.status}`);
    const value = await res.text();
    // Renew well before the service forgets it.
    this.token = { value, until: Date.now() + (TOKEN_TTL_SECONDS - 60) * 1000 };
    return value;
  }

  /** The body at `path`, or undefined for 404 (e.g. no spot action pending). */
  async get(path: string): Promise<string | undefined> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const token = await this.sessionToken();
      const res = await fetch(new URL(path, this.baseUrl), {
        headers: { 'x-aws-ec2-metadata-token': token },
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (res.status === 401 && attempt === 0) {
        this.token = undefined; // expired or revoked session: get a new one once
        continue;
      }
      if (res.status === 404) return undefined;
      if (!res.ok) throw new Error(`IMDS GET ${path}: HTTP ${res.status}`);
      return res.text();
    }
    throw new Error(`IMDS GET ${path}: unauthorized`);
  }
}
