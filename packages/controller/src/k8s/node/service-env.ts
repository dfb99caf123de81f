// The Service environment a kubelet gives every container: the `default/kubernetes` Service's
// variables and, unless the pod sets enableServiceLinks: false, those of every Service in the
// pod's namespace, exactly as pkg/kubelet/envvars FromServices writes them (the *_SERVICE_*
// names plus the Docker-link *_PORT_* family), from the Services the controller already streams
// to cells. Only a cluster without the kubernetes Service gets the API server's own address.
import { Protocol, type ClusterService } from '@cello/proto/cell';
import { CelloError } from '../../errors.js';

export interface EnvVar {
  name: string;
  value: string;
}

/** The cluster's Services as the controller keeps them for cells (services/cluster-services.ts). */
export interface ServiceView {
  /** Whether Services have been listed once: before that, "no such Service" means nothing. */
  isSynced(): boolean;
  service(key: string): ClusterService | undefined;
  /** Every Service of a namespace. */
  inNamespace(namespace: string): ClusterService[];
}

export const KUBERNETES_SERVICE = 'default/kubernetes';

/** The kubelet's own refusal: container env cannot be made before Services have been read. */
export class ServicesNotSyncedError extends CelloError {
  constructor() {
    super('Unavailable', 'services have not yet been read at least once, cannot construct envvars');
  }
}

const envName = (s: string) => s.replace(/-/g, '_').toUpperCase();

function protocolName(p: Protocol): string {
  if (p === Protocol.PROTOCOL_UDP) return 'UDP';
  if (p === Protocol.PROTOCOL_SCTP) return 'SCTP';
  return 'TCP';
}

/** envvars.FromServices for one Service; none for a headless Service or one without ports. */
export function serviceEnv(svc: Pick<ClusterService, 'name' | 'clusterIps' | 'ports'>): EnvVar[] {
  const ip = svc.clusterIps[0];
  const first = svc.ports[0];
  if (!ip || !first) return [];
  const prefix = envName(svc.name);
  const host = ip.includes(':') ? `[${ip}]` : ip;
  const out: EnvVar[] = [
    { name: `${prefix}_SERVICE_HOST`, value: ip },
    { name: `${prefix}_SERVICE_PORT`, value: String(first.port) },
  ];
  for (const p of svc.ports) if (p.name) out.push({ name: `${prefix}_SERVICE_PORT_${envName(p.name)}`, value: String(p.port) });
  svc.ports.forEach((p, i) => {
    const proto = protocolName(p.protocol);
    const url = `${proto.toLowerCase()}://${host}:${p.port}`;
    if (i === 0) out.push({ name: `${prefix}_PORT`, value: url }); // Docker special-cases the first port
    const pp = `${prefix}_PORT_${p.port}_${proto}`;
    out.push({ name: pp, value: url }, { name: `${pp}_PROTO`, value: proto.toLowerCase() }, { name: `${pp}_PORT`, value: String(p.port) }, { name: `${pp}_ADDR`, value: ip });
  });
  return out;
}

/**
 * KUBERNETES_SERVICE_* for a pod. `configured` (kubernetes.podApiServer) wins: the operator
 * said where pods reach the API server. Else the `default/kubernetes` Service, as on any node.
 * Only when the cluster has no such Service (or Services are not streamed at all) do pods get
 * `fallback`, the API server's address from the kubeconfig: the only address known for it.
 */
export function apiServerEnv(o: { configured?: { host: string; port: number }; services?: ServiceView; fallback?: { host: string; port: number } }): EnvVar[] {
  if (o.configured) return serviceEnv(addressAsService(o.configured));
  if (o.services) {
    if (!o.services.isSynced()) throw new ServicesNotSyncedError();
    const env = serviceEnv(o.services.service(KUBERNETES_SERVICE) ?? { name: 'kubernetes', clusterIps: [], ports: [] });
    if (env.length > 0) return env;
  }
  return o.fallback ? serviceEnv(addressAsService(o.fallback)) : [];
}

// The API server's own address, written as the kubernetes Service's single https port would be.
function addressAsService(a: { host: string; port: number }): Pick<ClusterService, 'name' | 'clusterIps' | 'ports'> {
  return { name: 'kubernetes', clusterIps: [a.host], ports: [{ name: 'https', protocol: Protocol.PROTOCOL_TCP, port: a.port, nodePort: 0 }] };
}

/**
 * The kubelet's getServiceEnvVarMap: the master Service (apiServerEnv) always; with service
 * links (the default) every Service of the pod's namespace too, a namespace Service of the same
 * name winning over the master one. Services are taken in name order so the result, and the
 * manifest made from it, is the same every time (the kubelet's map order is random).
 */
export function podServiceEnv(o: Parameters<typeof apiServerEnv>[0] & { namespace: string; enableServiceLinks?: boolean | undefined }): EnvVar[] {
  const byName = new Map<string, EnvVar[]>([['kubernetes', apiServerEnv(o)]]);
  if (o.enableServiceLinks !== false && o.services) {
    const local = o.services.inNamespace(o.namespace).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const svc of local) {
      if (o.namespace === 'default' && svc.name === 'kubernetes') continue; // the master Service, above
      const env = serviceEnv(svc);
      // The kubelet skips Services without a cluster IP (headless, ExternalName).
      if (env.length > 0) byName.set(svc.name, env);
    }
  }
  const out = new Map<string, string>();
  for (const env of byName.values()) for (const e of env) out.set(e.name, e.value);
  return [...out].map(([name, value]) => ({ name, value }));
}
