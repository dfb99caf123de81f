// What critest pulls, served by a local registry under the names critest uses (the shim's and the
// cells' registries configuration rewrite registry.k8s.io and gcr.io to it): its busybox, real
// nginx and httpd stand-in (pause-image.ts) and the k8s-staging-cri-tools test images with the properties each image
// spec checks (users, distinct and shared IDs).
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { pushImage, type RegistryServer } from '@cello/testkit';
import { pushCritestNginx, pushCritestWebServer } from '../pause-image.js';
import { conformanceLayout, pushNonewprivs, pushUpstreamBusybox } from './e2e-images.js';

const REPO = 'k8s-staging-cri-tools';
const layer = (text: string) => ({ blob: Buffer.from(text.padEnd(512, ' ')) });

export async function pushCriToolsTestImages(registry: RegistryServer): Promise<void> {
  const push = (name: string, label: string, config: Record<string, unknown> = {}) =>
    pushImage(registry, `${REPO}/${name}`, [layer(label)], { Labels: { spec: label }, ...config });
  await push('test-image-latest:latest', 'latest');
  await push('test-image-tag:test', 'tag');
  await push('test-image-tag:all', 'all');
  await push('test-image-user-uid:latest', 'uid', { User: '1002' });
  await push('test-image-user-username:latest', 'username', { User: 'www-data' });
  await push('test-image-user-uid-group:latest', 'uid-group', { User: '1003:1003' });
  await push('test-image-user-username-group:latest', 'username-group', { User: 'www-data:www-data' });
  for (const n of [1, 2, 3]) await push(`test-image-${n}:latest`, `different-${n}`);
  // Three tags of one image: identical bytes, so one ID.
  for (const n of [1, 2, 3]) await push(`test-image-tags:${n}`, 'same');
}

/**
 * Everything a whole critest run pulls. busybox and nonewprivs come from the conformance image
 * build (e2e-images.ts: upstream's busybox, whose sh runs commands through PATH, as critest's).
 */
export async function pushCritestImages(registry: RegistryServer): Promise<void> {
  const layout = conformanceLayout();
  try {
    await pushUpstreamBusybox(registry, layout, 'e2e-test-images/busybox:1.29-2');
    await pushNonewprivs(registry, layout);
  } finally {
    rmSync(dirname(layout), { recursive: true, force: true });
  }
  await pushCritestNginx(registry, 'e2e-test-images/nginx:1.14-2');
  await pushCritestWebServer(registry, 'e2e-test-images/httpd:2.4.39-4', 'httpd');
  await pushCriToolsTestImages(registry);
}
