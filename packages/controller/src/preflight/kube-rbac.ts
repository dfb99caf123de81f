// Preflight of the virtual node: every permission it uses, asked of the API server with a
// SelfSubjectAccessReview under the controller's own credentials (the kubeconfig or the
// service account), so a missing RBAC rule is named before a pod is stuck on it.
import { errMsg } from '@cello/proto';
import type { KubeRest } from '../k8s/client/rest.js';
import type { KubernetesConfig } from '../k8s/config.js';
import { fail, ok, type CheckResult } from './result.js';

export interface Permission {
  verb: string;
  /** '' is the core group. */
  group: string;
  resource: string;
  subresource?: string;
  /** Cluster-wide (all namespaces) when absent. */
  namespace?: string;
  /** Why the virtual node needs it (shown with a failure). */
  why: string;
}

const each = (verbs: string[], p: Omit<Permission, 'verb'>): Permission[] => verbs.map((verb) => ({ verb, ...p }));

/** What the virtual node calls (deploy/base/rbac.yaml grants the same). */
export function virtualNodePermissions(k: KubernetesConfig): Permission[] {
  return [
    ...each(['get', 'create', 'patch'], { group: '', resource: 'nodes', why: 'register the Node' }),
    ...each(['patch'], { group: '', resource: 'nodes', subresource: 'status', why: "keep the Node's status" }),
    ...each(['get', 'list', 'watch', 'delete'], { group: '', resource: 'pods', why: 'run the pods bound to the node' }),
    ...each(['patch'], { group: '', resource: 'pods', subresource: 'status', why: "write pods' status" }),
    ...each(['get'], { group: '', resource: 'secrets', why: "send a pod's secrets to its cell" }),
    ...each(['get'], { group: '', resource: 'configmaps', why: "send a pod's configMaps to its cell" }),
    ...each(['create'], { group: '', resource: 'serviceaccounts', subresource: 'token', why: 'projected service-account tokens' }),
    ...each(['get'], { group: '', resource: 'serviceaccounts', why: "a ServiceAccount's imagePullSecrets" }),
    ...each(['list', 'watch'], { group: '', resource: 'services', why: "cells' Service proxies" }),
    ...each(['list', 'watch'], { group: 'discovery.k8s.io', resource: 'endpointslices', why: "cells' Service proxies" }),
    ...each(['create', 'patch', 'list'], { group: '', resource: 'events', why: "pods' Events" }),
    ...each(['create'], { group: 'authentication.k8s.io', resource: 'tokenreviews', why: 'the kubelet API authenticates bearer tokens' }),
    ...each(['create'], { group: 'authorization.k8s.io', resource: 'subjectaccessreviews', why: 'the kubelet API authorizes its callers' }),
    ...each(['get', 'create', 'patch'], { group: 'coordination.k8s.io', resource: 'leases', namespace: 'kube-node-lease', why: 'the node heartbeat Lease' }),
    ...(k.leaderElection.enabled
      ? each(['get', 'create', 'update', 'patch'], { group: 'coordination.k8s.io', resource: 'leases', namespace: k.leaderElection.namespace, why: 'leader election' })
      : []),
  ];
}

interface SelfSubjectAccessReview {
  status?: { allowed?: boolean; denied?: boolean; reason?: string; evaluationError?: string };
}

export function describePermission(p: Permission): string {
  const res = `${p.resource}${p.subresource ? `/${p.subresource}` : ''}${p.group ? `.${p.group}` : ''}`;
  return `${p.verb} ${res}${p.namespace ? ` in ${p.namespace}` : ''}`;
}

export async function rbacPreflight(rest: KubeRest, perms: readonly Permission[]): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  for (const p of perms) {
    const check = `rbac: ${describePermission(p)}`;
    try {
      const r = await rest.post<SelfSubjectAccessReview>('/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
        apiVersion: 'authorization.k8s.io/v1',
        kind: 'SelfSubjectAccessReview',
        spec: {
          resourceAttributes: {
            verb: p.verb,
            group: p.group,
            resource: p.resource,
            ...(p.subresource ? { subresource: p.subresource } : {}),
            ...(p.namespace ? { namespace: p.namespace } : {}),
          },
        },
      });
      if (r.status?.allowed) out.push(ok(check, 'allowed'));
      else {
        const rule = `apiGroups: ["${p.group}"], resources: ["${p.resource}${p.subresource ? `/${p.subresource}` : ''}"], verbs: ["${p.verb}"]`;
        const scope = p.namespace ? `a Role in ${p.namespace}` : 'the ClusterRole';
        out.push(
          fail(check, `denied${r.status?.reason ? `: ${r.status.reason}` : ''} (needed to ${p.why})`, `add {${rule}} to ${scope} bound to the controller (deploy/base/rbac.yaml)`),
        );
      }
    } catch (err) {
      out.push(fail(check, `the review failed: ${errMsg(err)}`, "the controller's kubeconfig or service account must reach the API server"));
      // One unreachable API server is one failure, not one per permission.
      break;
    }
  }
  return out;
}
