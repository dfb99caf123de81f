// Kubernetes EndpointSlices -> what cells' Service proxies get: IPv4 and IPv6 slices both pass
// (a dual-stack Service has one of each; the agent programs each family), FQDN ones do not.
import { describe, expect, it } from 'vitest';
import { toClusterEndpointSlice, toClusterService, type KubeEndpointSlice } from '../../src/services/from-kube.js';

const slice = (addressType: string | undefined, addresses: string[]): KubeEndpointSlice => ({
  metadata: { namespace: 'default', name: `web-${addressType ?? 'none'}`, labels: { 'kubernetes.io/service-name': 'web' } },
  ...(addressType ? { addressType } : {}),
  ports: [{ name: 'http', protocol: 'TCP', port: 8080 }],
  endpoints: [{ addresses, conditions: { ready: true } }],
});

describe('EndpointSlices streamed to cells', () => {
  it('passes IPv4 and IPv6 slices with their addresses, and drops FQDN ones', () => {
    expect(toClusterEndpointSlice(slice('IPv4', ['10.1.0.5']))?.endpoints[0]?.addresses).toEqual(['10.1.0.5']);
    expect(toClusterEndpointSlice(slice(undefined, ['10.1.0.6']))?.endpoints[0]?.addresses).toEqual(['10.1.0.6']);
    expect(toClusterEndpointSlice(slice('IPv6', ['fd00:1::5']))).toMatchObject({ service: 'web', endpoints: [{ addresses: ['fd00:1::5'], ready: true }] });
    expect(toClusterEndpointSlice(slice('FQDN', ['db.example.com']))).toBeUndefined();
  });

  it("keeps both of a dual-stack Service's cluster IPs", () => {
    const svc = toClusterService({ metadata: { name: 'web' }, spec: { clusterIP: '10.96.0.20', clusterIPs: ['10.96.0.20', 'fd00:96::20'], ports: [{ port: 80 }] } });
    expect(svc.clusterIps).toEqual(['10.96.0.20', 'fd00:96::20']);
  });
});
