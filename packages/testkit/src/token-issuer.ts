// A Docker token service for tests of registries with distribution's `auth: token` (image-puller, cri).
import { execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/** libtrust's key ID (what distribution matches a JWT's `kid` against): base32 of sha256(SPKI DER)[:30], in groups of 4. */
function libtrustKeyId(spkiDer: Buffer): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const bytes = createHash('sha256').update(spkiDer).digest().subarray(0, 30);
  let bits = 0;
  let value = 0;
  let s = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      s += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) s += alphabet[(value << (5 - bits)) & 31];
  return s.match(/.{1,4}/g)!.join(':');
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

export interface TokenIssuer {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
  /** Token requests seen: scope and whether credentials came with them. */
  requests: { scope: string; user: string | undefined }[];
  /** Lifetime written into the JWT (what the registry enforces). */
  jwtTtlSeconds: number;
  /** What the issuer tells the client (`expires_in`). */
  advertisedTtlSeconds: number;
  /** The next N tokens carry a wrong issuer, so the registry answers 401 to them. */
  badTokens: number;
  /** Bytes of padding added to each token response (an oversized answer). */
  padBytes: number;
  stop(): Promise<void>;
}

/**
 * A Docker token service for distribution's `auth: token`: RS256 JWTs with the libtrust `kid`
 * of a key whose self-signed certificate is the registry's rootcertbundle. Grants the requested
 * actions to `user`/`password`, refuses anonymous and wrong credentials.
 */
export async function startTokenIssuer(dir: string, user: string, password: string, host = '127.0.0.1'): Promise<TokenIssuer> {
  const key = join(dir, 'token.key');
  const cert = join(dir, 'token.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=cello-test-token-issuer'], {
    stdio: 'ignore',
  });
  const priv = createPrivateKey(readFileSync(key));
  const kid = libtrustKeyId(createPublicKey(priv).export({ type: 'spki', format: 'der' }));
  const service = 'cello-test-registry';
  const issuerName = 'cello-test-issuer';
  const state = { requests: [] as TokenIssuer['requests'], jwtTtlSeconds: 300, advertisedTtlSeconds: 300, badTokens: 0, padBytes: 0 };
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8').on('data', (d: string) => (body += d));
    req.on('end', () => issue(req, res, body));
  });
  // GET with Basic credentials, or POST grant_type=refresh_token with the identity token `idtoken-USER`.
  const issue = (req: IncomingMessage, res: ServerResponse, body: string): void => {
    const u = new URL(req.url ?? '/', 'http://x');
    const form = new URLSearchParams(req.method === 'POST' ? body : '');
    const scope = (req.method === 'POST' ? form.get('scope') : u.searchParams.get('scope')) ?? '';
    const auth = req.headers.authorization;
    let creds = auth?.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString() : undefined;
    if (req.method === 'POST' && form.get('grant_type') === 'refresh_token' && form.get('refresh_token') === `idtoken-${user}`) creds = `${user}:${password}`;
    state.requests.push({ scope, user: creds?.split(':')[0] });
    if (creds !== `${user}:${password}`) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end('{"details":"bad credentials"}');
      return;
    }
    const access = scope
      .split(' ')
      .filter(Boolean)
      .map((s) => {
        const [type, name, actions] = s.split(':');
        return { type, name, actions: (actions ?? '').split(',') };
      });
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', kid };
    const bad = state.badTokens > 0;
    if (bad) state.badTokens--;
    const claims = {
      iss: bad ? 'someone-else' : issuerName,
      sub: user,
      aud: service,
      exp: now + state.jwtTtlSeconds,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const token = `${signingInput}.${b64url(sign('sha256', Buffer.from(signingInput), priv))}`;
    res.writeHead(200, { 'content-type': 'application/json' });
    // The OAuth2 form answers access_token; the Docker form answers token.
    res.end(
      JSON.stringify({
        [req.method === 'POST' ? 'access_token' : 'token']: token,
        expires_in: state.advertisedTtlSeconds,
        issued_at: new Date().toISOString(),
        ...(state.padBytes ? { pad: 'x'.repeat(state.padBytes) } : {}),
      }),
    );
  };
  await new Promise<void>((r) => server.listen(0, host, r));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, {
    realm: `http://${host}:${port}/token`,
    service,
    issuer: issuerName,
    rootCertBundle: cert,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  });
}
