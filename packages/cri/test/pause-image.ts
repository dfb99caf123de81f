// critest's web server images built from busybox's layer (the sandbox image itself is testkit's
// pushPause; critest's busybox comes from the conformance build, critest/e2e-images.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildFixtures, pushImage, type RegistryServer } from '@cello/testkit';

/** busybox's layers from the fixture layout, each with its DiffID. */
async function busyboxLayers(): Promise<{ layers: { blob: Buffer; mediaType: string; diffId: string }[] }> {
  const f = await buildFixtures('busybox');
  const index = JSON.parse(readFileSync(join(f.layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const blob = (d: string) => readFileSync(join(f.layout, 'blobs', 'sha256', d.slice('sha256:'.length)));
  const m = index.manifests.find((x) => x.annotations?.['org.opencontainers.image.ref.name'] === 'busybox')!;
  const manifest = JSON.parse(blob(m.digest).toString()) as { config: { digest: string }; layers: { digest: string; mediaType: string }[] };
  const config = JSON.parse(blob(manifest.config.digest).toString()) as { rootfs: { diff_ids: string[] } };
  return { layers: manifest.layers.map((l, i) => ({ blob: blob(l.digest), mediaType: l.mediaType, diffId: config.rootfs.diff_ids[i]! })) };
}

/**
 * critest's web servers (registry.k8s.io/e2e-test-images/nginx:1.14-2, httpd:2.4.39-4) as far as its specs use them:
 * an HTTP server answering 200 on port 80 (the port-forward and networking specs fetch its main
 * page) — busybox's httpd serving a page that says what it stands for.
 */
export async function pushCritestWebServer(reg: RegistryServer, name: string, server = 'nginx'): Promise<string> {
  const { layers } = await busyboxLayers();
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  // One line on stdout first: critest's multi-container spec looks for the server's name in its log.
  const serve = `echo "${server} (busybox httpd standing in for critest's image)"; mkdir -p /tmp/www && echo "<h1>Welcome to ${server}!</h1>" > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www`;
  return (await pushImage(reg, name, layers, { Entrypoint: ['sh', '-c', serve], Cmd: null, Env: env, ExposedPorts: { '80/tcp': {} } })).ref;
}
