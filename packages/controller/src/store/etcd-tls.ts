// How the controller reaches etcd safely. etcd holds the sealed CA key, sealed secrets and every
// pod spec, and any client that reaches it can rewrite them: over the network it is TLS with a
// client certificate (`store.tls`), as etcd's own `--client-cert-auth` expects. Each file is read
// and checked here at start, so a wrong path or a key that does not fit its certificate fails
// with the field named instead of as an opaque handshake error on the first request.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

export interface EtcdTlsOptions {
  /** CA (PEM) that signed etcd's server certificate. */
  caFile: string;
  /** Client certificate (PEM) and its key, for etcd's --client-cert-auth. Both or neither. */
  certFile?: string;
  keyFile?: string;
}

export interface EtcdCredentials {
  rootCertificate: Buffer;
  privateKey?: Buffer;
  certChain?: Buffer;
}

function read(path: unknown, field: string): Buffer {
  if (typeof path !== 'string' || path === '') throw new TypeError(`${field} must be a file path`);
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${field}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function certificate(pem: Buffer, field: string, path: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new Error(`${field}: ${path} is not a PEM certificate (${(err as Error).message})`);
  }
}

/** etcd3 `credentials` from the configured files, or a TypeError/Error naming the field at fault. */
export function etcdCredentials(tls: EtcdTlsOptions, field = 'store.tls'): EtcdCredentials {
  const rootCertificate = read(tls.caFile, `${field}.caFile`);
  certificate(rootCertificate, `${field}.caFile`, tls.caFile);
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new TypeError(`${field}.certFile and ${field}.keyFile go together (the client certificate and its key)`);
  }
  if (tls.certFile === undefined) return { rootCertificate };
  const certChain = read(tls.certFile, `${field}.certFile`);
  const privateKey = read(tls.keyFile, `${field}.keyFile`);
  const cert = certificate(certChain, `${field}.certFile`, tls.certFile);
  let fits = false;
  try {
    fits = cert.checkPrivateKey(createPrivateKey(privateKey));
  } catch (err) {
    throw new Error(`${field}.keyFile: ${tls.keyFile} is not a PEM private key (${(err as Error).message})`);
  }
  if (!fits) throw new Error(`${field}.keyFile: ${tls.keyFile} is not the key of ${field}.certFile ${tls.certFile}`);
  return { rootCertificate, privateKey, certChain };
}

function loopback(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || (isIP(host) === 4 && host.startsWith('127.')) || host === '::1';
}

/**
 * Refuses endpoint/TLS combinations that would not do what they seem to: TLS credentials sent
 * to http:// endpoints (etcd3 would try TLS on a plaintext port), a mix of schemes (etcd3 uses
 * one set of credentials for every endpoint), and a password sent in clear text beyond loopback.
 */
export function checkEtcdTransport(endpoints: string[], tls: EtcdTlsOptions | undefined, hasCredentials: boolean, hasPassword: boolean): void {
  const https = endpoints.filter((e) => e.startsWith('https://'));
  if (https.length > 0 && https.length < endpoints.length) {
    throw new TypeError(`store.endpoints mixes http:// and https:// (${endpoints.join(', ')}); one client talks to all of them one way`);
  }
  if ((tls || hasCredentials) && https.length === 0) {
    throw new TypeError(`store.tls is set but store.endpoints are http:// (${endpoints.join(', ')}); use https:// URLs`);
  }
  if (hasPassword && https.length === 0) {
    const remote = endpoints.filter((e) => !loopback(e));
    if (remote.length > 0)
      throw new TypeError(`store.auth: the etcd password would cross the network in clear text to ${remote.join(', ')}; use https:// endpoints with store.tls`);
  }
}
