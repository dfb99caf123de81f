// A throwaway PKI made with openssl: a CA, the agent's server certificate (SAN 127.0.0.1, cell
// test-cell), the controller's client certificate from the same CA, and a client certificate
// from a rogue CA.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Pki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  rogueCa: string;
  rogueCert: string;
  rogueKey: string;
  /**
   * Certificates of the same CA that are not the controller's, as [cert, key]: another cell's
   * (with client-auth usage, as cell certificates had before they were made server-only), an
   * API user's, the controller's name in another trust domain, and one naming two identities.
   */
  impostors: Record<'otherCell' | 'user' | 'otherTrustDomain' | 'twoIdentities', { cert: string; key: string; uri: string }>;
  /** An operator's client identity (spiffe://cello/client/operator), for `serve --allow-client operator`. */
  operator: { cert: string; key: string; uri: string };
}

function ossl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

function ca(dir: string, name: string): void {
  ossl(dir, [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    '1',
    '-subj',
    `/CN=${name}`,
  ]);
}

function leaf(dir: string, name: string, caName: string, ext: string): void {
  ossl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
  writeFileSync(join(dir, `${name}.ext`), ext);
  ossl(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${caName}.pem`,
    '-CAkey',
    `${caName}.key`,
    '-CAcreateserial',
    '-out',
    `${name}.pem`,
    '-days',
    '1',
    '-extfile',
    `${name}.ext`,
  ]);
}

export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'cello-pki-'));
  ca(dir, 'ca');
  ca(dir, 'rogue-ca');
  // The agent serves only the controller's identity in its own trust domain (server/peer-auth.ts).
  leaf(dir, 'server', 'ca', 'subjectAltName=URI:spiffe://cello/cell/test-cell,IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf(dir, 'client', 'ca', 'subjectAltName=URI:spiffe://cello/client/controller\nextendedKeyUsage=clientAuth\n');
  leaf(dir, 'rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string) => join(dir, f);
  const impostor = (name: string, uris: string[]) => {
    leaf(dir, name, 'ca', `subjectAltName=${uris.map((u) => `URI:${u}`).join(',')},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n`);
    return { cert: p(`${name}.pem`), key: p(`${name}.key`), uri: uris.join(', ') };
  };
  return {
    dir,
    ca: p('ca.pem'),
    serverCert: p('server.pem'),
    serverKey: p('server.key'),
    clientCert: p('client.pem'),
    clientKey: p('client.key'),
    rogueCa: p('rogue-ca.pem'),
    rogueCert: p('rogue.pem'),
    rogueKey: p('rogue.key'),
    impostors: {
      otherCell: impostor('other-cell', ['spiffe://cello/cell/other-cell']),
      user: impostor('user', ['spiffe://cello/user/alice']),
      otherTrustDomain: impostor('other-td', ['spiffe://elsewhere/client/controller']),
      twoIdentities: impostor('two-ids', ['spiffe://cello/cell/other-cell', 'spiffe://cello/client/controller']),
    },
    operator: impostor('operator', ['spiffe://cello/client/operator']),
  };
}
