// Who may call the virtual node's kubelet API, decided against a real kube-apiserver with RBAC:
// client certificates of the cluster CA are authorized with a SubjectAccessReview (user from the
// CN, groups from the O values) exactly like bearer tokens, as a kubelet in webhook mode does.
// The controller behind the kubelet API is not running: a request that passes authorization
// gets as far as it (503 for logs, 101 for an exec upgrade, 200 for /pods), one that does not
// stops at 401/403 first.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, type RequestOptions } from 'node:https';
import { credentials } from '@grpc/grpc-js';
import { freePort, startKubeApiserver, type IssuedCert, type KubeApiserver } from '@cello/testkit';
import { KubeletServer } from '../../src/k8s/kubelet/server.js';
import { CACHE_ENTRIES, KubeletAuth } from '../../src/k8s/kubelet/auth.js';
import type { IncomingMessage } from 'node:http';
import { SpdyStreams } from '../../src/k8s/kubelet/streams.js';
import { Controller } from '../../src/k8s/controller-client.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { createLogger } from '../../src/obs/logger.js';
import { wsExec } from '../helpers/ws-exec.js';

const NODE = 'cello-auth';

let kube: KubeApiserver;
let controller: Controller;
const servers: KubeletServer[] = [];
const streamers: SpdyStreams[] = [];
let port = 0;

async function startKubelet(allowedCNs?: string[]): Promise<number> {
  const serving = await kube.issueCert(`serving-${servers.length}`, { cn: NODE, ips: ['127.0.0.1'], dns: [NODE] });
  const log = createLogger({ level: 'silent' });
  const streams = new SpdyStreams({ controller, log });
  streamers.push(streams);
  const k = new KubeletServer({
    cert: serving.cert,
    key: serving.key,
    clientCA: kube.ca,
    ...(allowedCNs ? { allowedCNs } : {}),
    controller,
    rest: new KubeRest(loadKubeConfig(kube.kubeconfig)),
    nodeName: NODE,
    pods: () => [],
    log,
    onUpgrade: (req, socket, head) => streams.handle(req, socket, head),
  });
  servers.push(k);
  return k.listen('127.0.0.1', 0);
}

type Who = { cert?: IssuedCert; token?: string };

function call(p: number, who: Who, method: string, path: string, upgrade = false): Promise<{ code: number; body: string }> {
  const o: RequestOptions = {
    host: '127.0.0.1',
    port: p,
    method,
    path,
    ca: kube.ca,
    servername: NODE,
    timeout: 10_000,
    ...(who.cert ? { cert: who.cert.cert, key: who.cert.key } : {}),
    headers: {
      ...(who.token ? { authorization: `Bearer ${who.token}` } : {}),
      ...(upgrade ? { connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'v4.channel.k8s.io' } : {}),
    },
  };
  return new Promise((resolve, reject) => {
    const req = request(o, (res) => {
      let body = '';
      res.on('data', (b: Buffer) => (body += b.toString()));
      res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ code: res.statusCode ?? 0, body: '' });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end();
  });
}

const EXEC = '/exec/default/web/main?command=id&output=1';
const LOGS = '/containerLogs/default/web/main';

beforeAll(async () => {
  kube = await startKubeApiserver();
  controller = new Controller(`127.0.0.1:${await freePort()}`, credentials.createInsecure()); // nothing listens there
  port = await startKubelet();
}, 30 * 60_000); // the first run on a machine builds the Kubernetes binaries

afterAll(async () => {
  for (const s of streamers) s.close();
  for (const s of servers) await s.close();
  controller?.close();
  await kube?.stop();
}, 60_000);

describe('kubelet API authorization', () => {
  it('a client certificate of the cluster CA whose user has no RBAC is refused exec, logs and /pods (403 naming the attributes)', async () => {
    const mallory = await kube.issueCert('mallory', { cn: 'mallory' });
    const exec = await call(port, { cert: mallory }, 'POST', EXEC, true);
    expect(exec.code).toBe(403);
    expect(exec.body).toContain('user=mallory');
    expect(exec.body).toContain('verb=create, resource=nodes, subresource=proxy, name=cello-auth');
    const logs = await call(port, { cert: mallory }, 'GET', LOGS);
    expect(logs.code).toBe(403);
    expect(logs.body).toContain('verb=get, resource=nodes, subresource=proxy');
    expect((await call(port, { cert: mallory }, 'GET', '/pods')).code).toBe(403);
    expect((await call(port, { cert: mallory }, 'GET', '/stats/summary')).code).toBe(403);
    // Without any credentials: 401, as before.
    expect((await call(port, {}, 'GET', LOGS)).code).toBe(401);
  });

  it("the API server's kubelet client, bound to system:kubelet-api-admin, may exec and read logs", async () => {
    // As kubeadm sets it up: a plain user, authorized by a binding rather than system:masters.
    const apiClient = await kube.issueCert('apiserver-kubelet-client', { cn: 'apiserver-kubelet-client' });
    const bound = await kube.kubectl(['create', 'clusterrolebinding', 'apiserver-kubelet-client', '--clusterrole=system:kubelet-api-admin', '--user=apiserver-kubelet-client']);
    expect(bound.code, bound.stderr).toBe(0);
    expect((await call(port, { cert: apiClient }, 'POST', EXEC, true)).code).toBe(101);
    // Authorized: it reaches the controller, which is not running here.
    expect((await call(port, { cert: apiClient }, 'GET', LOGS)).code).toBe(503);
    expect((await call(port, { cert: apiClient }, 'GET', '/pods')).code).toBe(200);
    // The test harness's own kubelet client certificate (O=system:masters) too.
    expect((await call(port, { cert: kube.kubeletClient }, 'GET', '/pods')).code).toBe(200);
  });

  it("groups come from the certificate's O values, and POST is checked as create: get on nodes/proxy reads logs but does not exec", async () => {
    const role = await kube.kubectl(['create', 'clusterrole', 'node-proxy-reader', '--verb=get', '--resource=nodes/proxy']);
    expect(role.code, role.stderr).toBe(0);
    const binding = await kube.kubectl(['create', 'clusterrolebinding', 'node-proxy-readers', '--clusterrole=node-proxy-reader', '--group=proxy-readers']);
    expect(binding.code, binding.stderr).toBe(0);
    const reader = await kube.issueCert('reader', { cn: 'reader', org: 'proxy-readers' });
    expect((await call(port, { cert: reader }, 'GET', LOGS)).code).toBe(503);
    const exec = await call(port, { cert: reader }, 'POST', EXEC, true);
    expect(exec.code).toBe(403);
    expect(exec.body).toContain('groups=[proxy-readers, system:authenticated], verb=create');
  });

  it('exec over WebSocket (a GET upgrade) is authorized as create, like SPDY: no credentials, no RBAC or only get on nodes/proxy are refused', async () => {
    const url = `wss://127.0.0.1:${port}${EXEC}`;
    const ws = (who: Who) =>
      wsExec(url, {
        protocols: ['v4.channel.k8s.io'],
        tls: { ca: kube.ca, servername: NODE, ...(who.cert ? { cert: who.cert.cert, key: who.cert.key } : {}) },
        timeoutMs: 15_000,
      }).then(
        (r) => ({ status: 101, body: '', r }),
        (err: { status?: number; body?: string; message: string }) => ({ status: err.status ?? 0, body: err.body ?? err.message, r: undefined }),
      );
    const anonymous = await ws({});
    expect(anonymous.status).toBe(401);
    const mallory = await ws({ cert: await kube.issueCert('ws-mallory', { cn: 'ws-mallory' }) });
    expect(mallory.status).toBe(403);
    expect(mallory.body).toContain('user=ws-mallory');
    expect(mallory.body).toContain('verb=create, resource=nodes, subresource=proxy');
    // get on nodes/proxy reads logs (a GET) but does not exec, whatever the method of the upgrade.
    await kube.kubectl(['create', 'clusterrole', 'ws-node-proxy-reader', '--verb=get', '--resource=nodes/proxy']);
    await kube.kubectl(['create', 'clusterrolebinding', 'ws-node-proxy-readers', '--clusterrole=ws-node-proxy-reader', '--user=ws-reader']);
    const reader = await kube.issueCert('ws-reader', { cn: 'ws-reader' });
    expect((await call(port, { cert: reader }, 'GET', LOGS)).code).toBe(503);
    const readerExec = await ws({ cert: reader });
    expect(readerExec.status).toBe(403);
    expect(readerExec.body).toContain('verb=create');
    // The API server's client gets through: the stream opens and ends with the controller's failure as a Status.
    const admin = await ws({ cert: kube.kubeletClient });
    expect(admin.status, admin.body).toBe(101);
    expect(admin.r!.protocol).toBe('v4.channel.k8s.io');
    expect(JSON.parse(admin.r!.error)).toMatchObject({ status: 'Failure', code: 503, reason: 'ServiceUnavailable' });
    // A protocol the kubelet does not speak is refused at the handshake, naming what it speaks.
    const odd = await wsExec(url, { protocols: ['v9.channel.k8s.io'], tls: { ca: kube.ca, servername: NODE, cert: kube.kubeletClient.cert, key: kube.kubeletClient.key } }).catch(
      (err: { status?: number; body?: string }) => err,
    );
    expect(odd).toMatchObject({ status: 403 });
    expect((odd as { body: string }).body).toContain('v4.channel.k8s.io');
  });

  it('a bearer token whose service account has no RBAC is refused exec and logs', async () => {
    expect((await kube.kubectl(['create', 'serviceaccount', 'nobody'])).code).toBe(0);
    const token = (await kube.kubectl(['create', 'token', 'nobody'])).stdout.trim();
    expect(token).toMatch(/^ey/);
    const exec = await call(port, { token }, 'POST', EXEC, true);
    expect(exec.code).toBe(403);
    expect(exec.body).toContain('user=system:serviceaccount:default:nobody');
    expect((await call(port, { token }, 'GET', LOGS)).code).toBe(403);
  });

  it('allowedCommonNames restricts further: a certificate RBAC allows is still refused when its CN is not listed', async () => {
    expect((await kube.kubectl(['create', 'clusterrolebinding', 'vetted', '--clusterrole=system:kubelet-api-admin', '--user=vetted'])).code).toBe(0);
    const restricted = await startKubelet(['vetted']);
    const r = await call(restricted, { cert: kube.kubeletClient }, 'GET', '/pods');
    expect(r.code).toBe(403);
    expect(r.body).toContain('allowedCommonNames');
    const vetted = await kube.issueCert('vetted', { cn: 'vetted' });
    expect((await call(restricted, { cert: vetted }, 'GET', '/pods')).code).toBe(200);
  });

  it('made-up bearer tokens cannot grow the token cache without limit', async () => {
    const auth = new KubeletAuth({ nodeName: NODE, rest: new KubeRest(loadKubeConfig(kube.kubeconfig)) });
    const fake = (i: number) => ({ socket: { authorized: false }, headers: { authorization: `Bearer made-up-${i}` }, url: '/pods', method: 'GET' }) as unknown as IncomingMessage;
    const n = CACHE_ENTRIES + 200;
    for (let i = 0; i < n; i += 32) {
      const rs = await Promise.all(Array.from({ length: Math.min(32, n - i) }, (_, j) => auth.check(fake(i + j))));
      for (const r of rs) expect(r).toMatchObject({ ok: false, code: 401 });
    }
    expect(auth.cacheSizes().tokens).toBe(CACHE_ENTRIES);
  }, 120_000);
});
