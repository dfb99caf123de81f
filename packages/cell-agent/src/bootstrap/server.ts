// The agent's side of the bootstrap: before the cell has a certificate, serve only
// cello.cell.v1.CellBootstrap (TLS with a throwaway certificate, no client authentication).
//   RequestCertificate(token)  — the controller proves the one-time token from the user data;
//                                the agent records the token as used and answers with a CSR
//                                for the key it just generated (the key never leaves the cell).
//   InstallCertificate(token, certificate, ca) — the certificate must be for that key, signed
//                                by the CA from the user data and name this cell; the agent
//                                stores it and stops the bootstrap listener.
// A wrong, replayed or expired token is refused with PERMISSION_DENIED / the reason.
import { CelloError, joinHostPort, splitHostPort } from '@cello/proto';
import { timingSafeEqual } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import {
  CellBootstrapService,
  InstallCertificateResponse,
  RequestCertificateResponse,
  type CellBootstrapServer,
  type InstallCertificateRequest,
  type RequestCertificateRequest,
} from '@cello/proto/cell';
import type { Logger } from 'pino';
import { refusableUnary } from './unary.js';
import { identityFiles, markTokenUsed, tokenWasUsed, writeAtomic, type IdentityFiles } from './identity.js';
import type { CellUserData } from './user-data.js';
import { checkIssuedCertificate, makeCsr, newCellKey, samePem, throwawayCertificate, type CellKey } from './x509.js';

export interface BootstrapServerOptions {
  userData: CellUserData;
  stateDir: string;
  /** host:port; default 0.0.0.0:<agentPort from the user data>. */
  listen?: string;
  logger: Logger;
  now?: () => Date;
}

export interface BootstrapServer {
  /** host:port actually bound. */
  address: string;
  /** Resolves once a certificate is installed (and the listener has stopped). */
  installed: Promise<IdentityFiles>;
  /** Stops the listener without an identity (shutdown). */
  close(): Promise<void>;
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

export async function startBootstrapServer(o: BootstrapServerOptions): Promise<BootstrapServer> {
  const ud = o.userData;
  const files = identityFiles(o.stateDir);
  await mkdir(files.dir, { recursive: true, mode: 0o700 });
  const now = o.now ?? (() => new Date());
  const key: CellKey = await newCellKey();
  const tlsCert = await throwawayCertificate(key, ud.cellId);
  const log = o.logger.child({ component: 'bootstrap', cellId: ud.cellId });

  // The CSR's key is this process's key. RequestCertificate may be repeated with the same token
  // until a certificate is installed — a controller that died between the two calls is replaced
  // by one that asks again and gets a CSR for the same key (the TLS session pins it, so the
  // answer is useless to anyone else). A token spent by an earlier process stays spent.
  let requested = false;
  let csrPem: string | undefined;
  let done = false;
  let resolveInstalled!: (f: IdentityFiles) => void;
  let rejectInstalled!: (e: Error) => void;
  const installed = new Promise<IdentityFiles>((res, rej) => {
    resolveInstalled = res;
    rejectInstalled = rej;
  });
  installed.catch(() => undefined);

  const checkToken = (token: string) => {
    if (typeof token !== 'string' || token === '') throw new CelloError('InvalidArgument', 'token: required');
    if (!sameToken(token, ud.token)) throw new CelloError('PermissionDenied', "token: does not match this cell's bootstrap token");
    if (now().getTime() >= Date.parse(ud.tokenExpiresAt)) {
      throw new CelloError('PermissionDenied', `token: expired at ${ud.tokenExpiresAt}`);
    }
  };

  const handle = <Req, Res>(name: string, f: (req: Req) => Promise<Res>) => refusableUnary<Req, Res>(log, 'bootstrap call refused', name, (call) => f(call.request));

  const impl: CellBootstrapServer = {
    requestCertificate: handle<RequestCertificateRequest, RequestCertificateResponse>('RequestCertificate', async (req) => {
      checkToken(req.token);
      if (done) throw new CelloError('PermissionDenied', 'token: already used (a certificate is installed)');
      if (requested && csrPem) {
        log.info('certificate request asked again (a new controller?); same key, same CSR');
        return RequestCertificateResponse.fromPartial({ cellId: ud.cellId, csrPem });
      }
      if (await tokenWasUsed(files, req.token)) {
        throw new CelloError('PermissionDenied', 'token: already used (a bootstrap token is good once)');
      }
      requested = true;
      await markTokenUsed(files, req.token);
      log.info('bootstrap token accepted; sending a certificate request');
      csrPem = await makeCsr(key, ud.cellId);
      return RequestCertificateResponse.fromPartial({ cellId: ud.cellId, csrPem });
    }),
    installCertificate: handle<InstallCertificateRequest, InstallCertificateResponse>('InstallCertificate', async (req) => {
      checkToken(req.token);
      if (!requested) throw new CelloError('FailedPrecondition', 'RequestCertificate first');
      if (done) throw new CelloError('AlreadyExists', 'a certificate is already installed');
      if (req.caPem && !samePem(req.caPem, ud.caCertPem)) {
        throw new CelloError('PermissionDenied', 'ca_pem: differs from the CA in the user data (the trust anchor cannot be changed here)');
      }
      try {
        await checkIssuedCertificate({
          certPem: req.certificatePem,
          caPem: ud.caCertPem,
          key,
          cellId: ud.cellId,
          ...(ud.trustDomain ? { trustDomain: ud.trustDomain } : {}),
          now: now(),
        });
      } catch (err) {
        throw new CelloError('InvalidArgument', (err as Error).message);
      }
      await writeAtomic(files.key, key.keyPem, 0o600);
      await writeAtomic(files.ca, ud.caCertPem, 0o644);
      await writeAtomic(files.cert, req.certificatePem, 0o644);
      done = true;
      log.info('certificate installed; the bootstrap listener stops and the agent serves mTLS only');
      // Answer first, then stop listening.
      setImmediate(() => {
        server.tryShutdown(() => resolveInstalled(files));
      });
      return InstallCertificateResponse.fromPartial({});
    }),
  };

  const server = new Server();
  server.addService(CellBootstrapService, impl);
  const listen = o.listen ?? `0.0.0.0:${ud.agentPort}`;
  const creds = ServerCredentials.createSsl(null, [{ private_key: Buffer.from(key.keyPem), cert_chain: Buffer.from(tlsCert) }], false);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(listen, creds, (err, p) => (err ? reject(new Error(`bootstrap listener on ${listen}: ${err.message}`)) : resolve(p))),
  );
  const address = joinHostPort(splitHostPort(listen).host, port);
  log.info({ address, tokenExpiresAt: ud.tokenExpiresAt }, 'waiting for the controller to bootstrap this cell');
  return {
    address,
    installed,
    async close() {
      if (!done) rejectInstalled(new Error('bootstrap listener closed before a certificate was installed'));
      await new Promise<void>((r) => server.tryShutdown(() => r()));
    },
  };
}
