// The tests' in-cluster API caller (scripts/k8s/apiclient, built and packed into a one-layer
// image by scripts/k8s/build-apiclient.sh, cached): a pod that calls the Kubernetes API the way an
// in-cluster program does — its service-account token, the mounted CA and the kubernetes
// Service — with no kubectl and no client library in between.
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pushLayoutTag } from './fixtures.js';
import type { RegistryServer } from './registry.js';

const BUILD_SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'scripts', 'k8s', 'build-apiclient.sh');

/** The OCI image layout holding the apiclient image (tag `apiclient`); builds it on first use. */
export function apiClientLayout(): string {
  const r = spawnSync('bash', [BUILD_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 16 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${BUILD_SCRIPT} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  return join(dirname(r.stdout.trim().split('\n').pop()!), 'oci');
}

/**
 * Pushes the apiclient image to `registry`; returns its reference. Its entrypoint is
 * `/apiclient [-token-file F] URL...`, printing `GET <url> <status>` per URL (see main.go).
 */
export async function pushApiClient(registry: RegistryServer): Promise<string> {
  return pushLayoutTag(registry, apiClientLayout(), 'apiclient', 'cello-test/apiclient:latest');
}
