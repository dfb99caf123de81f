// In a cluster the API server decides who calls the controller API and what they may do: a real
// kube-apiserver (RBAC) reviews a service account's bearer token (TokenReview) and its rights on
// pods and pods/exec (SubjectAccessReview), in front of a real ControllerApi serving TLS.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { ControllerClient } from '@cello/proto/controller';
import { startKubeApiserver, type KubeApiserver } from '@cello/testkit';
import { openStore, type Store } from '../../src/store/index.js';
import { CertificateAuthority } from '../../src/security/ca.js';
import { ControllerApi } from '../../src/api/server.js';
import { ApiAuth, apiChannelCredentials, CertificateSource, SubjectAccessReviewer, TokenReviewer, API_SERVER_NAME } from '../../src/api/auth/index.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { AgentPool, insecureAgentCredentials } from '../../src/agents/pool.js';
import { catalogTypes, localCatalog } from '../../src/catalog/catalog.js';
import { silentLogger } from '../../src/obs/logger.js';

let kube: KubeApiserver;
let store: Store;
let api: ControllerApi;
let ca: CertificateAuthority;
let port = 0;
let token = '';
const dir = mkdtempSync(join(tmpdir(), 'cello-kube-auth-'));

beforeAll(async () => {
  kube = await startKubeApiserver();
  for (const args of [
    ['create', 'namespace', 'dev'],
    ['-n', 'dev', 'create', 'serviceaccount', 'runner'],
    ['-n', 'dev', 'create', 'role', 'pod-reader', '--verb=get,list', '--resource=pods'],
    ['-n', 'dev', 'create', 'rolebinding', 'runner-reads', '--role=pod-reader', '--serviceaccount=dev:runner'],
  ]) {
    const r = await kube.kubectl(args);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
  }
  const t = await kube.kubectl(['-n', 'dev', 'create', 'token', 'runner']);
  if (t.code !== 0) throw new Error(`kubectl create token: ${t.stderr}`);
  token = t.stdout.trim();
  store = await openStore({ kind: 'embedded', dir: join(dir, 'store') });
  ca = await CertificateAuthority.loadOrCreate({ store, encryptionKey: Buffer.alloc(32, 3) });
  const serving = await ca.issueServerCertificate(API_SERVER_NAME, { ips: ['127.0.0.1'] });
  const rest = new KubeRest(loadKubeConfig(kube.kubeconfig));
  const auth = new ApiAuth({
    tls: { caPem: ca.certPem, trustDomain: ca.trustDomain, serving: new CertificateSource({ ...serving, caPem: ca.certPem }) },
    policy: [],
    tokens: new TokenReviewer({ rest }),
    accessReview: new SubjectAccessReviewer({ rest }),
  });
  api = new ControllerApi({
    store,
    agents: new AgentPool(insecureAgentCredentials),
    log: silentLogger(),
    controllerId: 'kube-auth',
    providerName: 'none',
    instanceTypes: catalogTypes(localCatalog()),
    auth,
  });
  port = await api.listen('127.0.0.1:0');
}, 180_000);

afterAll(async () => {
  await api?.close();
  await store?.close();
  await kube?.stop();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

function withToken(t: string): ControllerClient {
  return new ControllerClient(`127.0.0.1:${port}`, apiChannelCredentials({ caPem: ca.certPem, trustDomain: ca.trustDomain, token: t }));
}

function unary(c: ControllerClient, method: string, req: unknown): Promise<ServiceError | undefined> {
  return new Promise((resolve) => {
    const fn = (c as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!;
    fn.call(c, req, new Metadata(), { deadline: Date.now() + 15_000 }, (err: ServiceError | null) => resolve(err ?? undefined));
  });
}

describe('controller API in a cluster: TokenReview and SubjectAccessReview', () => {
  it('a token the API server does not accept is UNAUTHENTICATED', async () => {
    const c = withToken('eyJhbGciOiJSUzI1NiJ9.bm90LWEtdG9rZW4.c2lnbmF0dXJl');
    const err = await unary(c, 'getPod', { pod: { namespace: 'dev', name: 'x' } });
    c.close();
    expect(err?.code).toBe(Status.UNAUTHENTICATED);
    expect(err?.details).toMatch(/the bearer token was not accepted by the Kubernetes API server \(TokenReview\)/);
  });

  it('a service account gets what RBAC grants it on pods, and no more: get in its namespace, not exec, not elsewhere', async () => {
    const c = withToken(token);
    // Allowed, and there is no such pod: NOT_FOUND, past authorization.
    expect((await unary(c, 'getPod', { pod: { namespace: 'dev', name: 'x' } }))?.code).toBe(Status.NOT_FOUND);
    const other = await unary(c, 'getPod', { pod: { namespace: 'default', name: 'x' } });
    expect(other?.code).toBe(Status.PERMISSION_DENIED);
    expect(other?.details).toMatch(/user system:serviceaccount:dev:runner .* may not get pods in namespace default/);
    const s = c.exec();
    const ended = new Promise<ServiceError>((resolve) => s.on('error', resolve));
    s.on('data', () => undefined);
    s.write({ frame: { $case: 'target', value: { namespace: 'dev', name: 'x' } } });
    const err = await ended;
    c.close();
    expect(err.code).toBe(Status.PERMISSION_DENIED);
    expect(err.details).toMatch(/may not exec pods in namespace dev: .*SubjectAccessReview/);
  });
});
