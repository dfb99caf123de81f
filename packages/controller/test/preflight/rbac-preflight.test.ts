// Preflight of the virtual node's RBAC against the harness's real kube-apiserver: the
// ServiceAccount with deploy/base's roles passes every SelfSubjectAccessReview, the same account
// with one rule taken away fails that one check naming the verb and resource, and a user with
// no rights fails them all.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kubeconfigFor, startKubeApiserver, type KubeApiserver } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { KubeRest, loadKubeConfig } from '../../src/k8s/client/rest.js';
import { kubernetesConfigSchema } from '../../src/k8s/config.js';
import { silentLogger } from '../../src/obs/logger.js';
import { formatPreflightTable, preflightConfig } from '../../src/preflight/index.js';
import { rbacPreflight, virtualNodePermissions } from '../../src/preflight/kube-rbac.js';

const DEPLOY = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'deploy', 'base');

let kube: KubeApiserver;
let saKubeconfig: string;
let nobodyKubeconfig: string;

beforeAll(async () => {
  kube = await startKubeApiserver({ controllerManager: false, timeoutMs: 120_000 });
  for (const f of ['namespace.yaml', 'serviceaccount.yaml', 'rbac.yaml']) {
    const r = await kube.kubectl(['apply', '-f', join(DEPLOY, f)], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
  }
  const token = (await kube.kubectl(['-n', 'cello-system', 'create', 'token', 'cello-controller'])).stdout.trim();
  expect(token).toMatch(/^ey/);
  saKubeconfig = await kubeconfigFor(kube, 'sa', { token });
  const nobody = await kube.issueCert('nobody', { cn: 'nobody' });
  nobodyKubeconfig = await kubeconfigFor(kube, 'nobody', { 'client-certificate': nobody.certFile, 'client-key': nobody.keyFile });
}, 180_000);

afterAll(async () => {
  await kube?.stop();
});

const section = (kc: string) =>
  kubernetesConfigSchema.parse({
    enabled: true,
    kubeconfig: kc,
    kubelet: { certFile: kube.kubeletClient.certFile, keyFile: kube.kubeletClient.keyFile, clientCAFile: kube.caFile },
  });

describe('virtual node RBAC preflight', () => {
  it("passes with deploy/base's roles, through the daemon's preflight", async () => {
    const config = parseConfig({
      controllerId: 'rbac-preflight',
      api: { insecure: true },
      security: { mode: 'insecure-dev' },
      store: { kind: 'embedded', dir: join(kube.dir, 'store') },
      kubernetes: { enabled: true, kubeconfig: saKubeconfig, kubelet: { certFile: kube.kubeletClient.certFile, keyFile: kube.kubeletClient.keyFile, clientCAFile: kube.caFile } },
    });
    const rs = await preflightConfig(config, { log: silentLogger() });
    expect(
      rs.filter((r) => r.status === 'fail'),
      formatPreflightTable(rs),
    ).toEqual([]);
    const rbac = rs.filter((r) => r.check.startsWith('rbac: '));
    expect(rbac).toHaveLength(virtualNodePermissions(section(saKubeconfig)).length);
    expect(rbac.map((r) => r.check)).toContain('rbac: patch pods/status');
    expect(rbac.map((r) => r.check)).toContain('rbac: update leases.coordination.k8s.io in cello-system');
  }, 60_000);

  it('names the verb and resource a narrowed role no longer grants', async () => {
    const cr = JSON.parse((await kube.kubectl(['get', 'clusterrole', 'cello-virtual-node', '-o', 'json'])).stdout) as { rules: Array<{ resources: string[] }> };
    const i = cr.rules.findIndex((r) => r.resources.includes('pods/status'));
    expect(i).toBeGreaterThanOrEqual(0);
    const patched = await kube.kubectl(['patch', 'clusterrole', 'cello-virtual-node', '--type=json', '-p', JSON.stringify([{ op: 'remove', path: `/rules/${i}` }])]);
    expect(patched.code, patched.stderr).toBe(0);
    try {
      const rest = new KubeRest(loadKubeConfig(saKubeconfig));
      const rs = await rbacPreflight(rest, virtualNodePermissions(section(saKubeconfig)));
      const failed = rs.filter((r) => r.status === 'fail');
      expect(
        failed.map((r) => r.check),
        formatPreflightTable(rs),
      ).toEqual(['rbac: patch pods/status']);
      expect(failed[0]!.detail).toContain("write pods' status");
      expect(failed[0]!.fix).toBe('add {apiGroups: [""], resources: ["pods/status"], verbs: ["patch"]} to the ClusterRole bound to the controller (deploy/base/rbac.yaml)');
    } finally {
      const r = await kube.kubectl(['apply', '-f', join(DEPLOY, 'rbac.yaml')]);
      expect(r.code, r.stderr).toBe(0);
    }
  }, 60_000);

  it('fails every permission for a user without rights', async () => {
    const perms = virtualNodePermissions(section(nobodyKubeconfig));
    const rs = await rbacPreflight(new KubeRest(loadKubeConfig(nobodyKubeconfig)), perms);
    expect(rs).toHaveLength(perms.length);
    expect(
      rs.every((r) => r.status === 'fail'),
      formatPreflightTable(rs),
    ).toBe(true);
    const lease = rs.find((r) => r.check === 'rbac: get leases.coordination.k8s.io in kube-node-lease')!;
    expect(lease.fix).toContain('a Role in kube-node-lease');
    expect(lease.fix).toContain('resources: ["leases"], verbs: ["get"]');
  }, 60_000);
});
