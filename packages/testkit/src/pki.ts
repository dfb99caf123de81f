// A throwaway private PKI made with openssl, for servers that speak TLS in tests and benchmarks
// (a registry signed by a private CA, a client certificate it requires).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  dir: string;
  /** The private CA (PEM file) that signed server and client. */
  ca: string;
  caKey: string;
  /** A server certificate for 127.0.0.1 and localhost, and its key. */
  server: { cert: string; key: string };
  /** A client certificate (clientAuth) from the same CA, and its key. */
  client: { cert: string; key: string };
  /** A client certificate from another CA, which a server trusting `ca` must refuse. */
  rogueClient: { cert: string; key: string };
}

function ossl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

function makeCa(dir: string, name: string): void {
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
    '2',
    '-subj',
    `/CN=${name}`,
  ]);
}

function makeLeaf(dir: string, name: string, ca: string, ext: string): void {
  ossl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
  writeFileSync(join(dir, `${name}.ext`), ext);
  ossl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
}

/** Makes the PKI in a new temp dir (the caller removes `dir`). */
export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'cello-test-pki-'));
  makeCa(dir, 'ca');
  makeCa(dir, 'rogue-ca');
  makeLeaf(dir, 'server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  makeLeaf(dir, 'client', 'ca', 'extendedKeyUsage=clientAuth\n');
  makeLeaf(dir, 'rogue-client', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string): string => join(dir, f);
  return {
    dir,
    ca: p('ca.pem'),
    caKey: p('ca.key'),
    server: { cert: p('server.pem'), key: p('server.key') },
    client: { cert: p('client.pem'), key: p('client.key') },
    rogueClient: { cert: p('rogue-client.pem'), key: p('rogue-client.key') },
  };
}
