// The firewall rule that lets the controller reach the agents: one ingress rule per agent port
// and controller, targeting the cells' network tag, from the configured ranges and/or source
// tags. Found by name before it is created (a restarted controller reuses it), and deleted by
// pruneAgentFirewalls once no live cell of this controller uses its port. With neither ranges
// nor source tags configured, no rule is managed: the operator's own rules admit the controller.
import { createHash } from 'node:crypto';
import type { FirewallsClient, protos } from '@google-cloud/compute';
import type { GceProviderConfig } from './config.js';
import { httpStatus } from './operations.js';

type Operation = protos.google.cloud.compute.v1.IOperation;

/** Marks rules this provider manages, with the controller they belong to. */
const DESCRIPTION_PREFIX = 'cello: agent port of cells of controller ';

/** The rule's name: `cello-agent-PORT-HASH`, the hash of the controller ID keeping controllers' rules apart. */
export function firewallName(controllerId: string, agentPort: number): string {
  return `cello-agent-${agentPort}-${createHash('sha256').update(controllerId).digest('hex').slice(0, 10)}`;
}

export interface FirewallDeps {
  client: FirewallsClient;
  waitOp: (op: Operation) => Promise<Operation>;
  project: string;
}

/** The rule between cells: `cello-cells-HASH`. */
export function cellTrafficFirewallName(controllerId: string): string {
  return `cello-cells-${createHash('sha256').update(controllerId).digest('hex').slice(0, 10)}`;
}

const CELL_TRAFFIC_PREFIX = 'cello: traffic between cells of controller ';

/** Makes sure a rule exists (found by name; another replica's insert is no error); returns its name. */
async function ensureRule(o: FirewallDeps, rule: protos.google.cloud.compute.v1.IFirewall & { name: string }): Promise<string> {
  try {
    await o.client.get({ project: o.project, firewall: rule.name }, { timeout: 30_000 });
    return rule.name;
  } catch (err) {
    if (httpStatus(err) !== 404) throw err;
  }
  try {
    const [op] = await o.client.insert({ project: o.project, firewallResource: { direction: 'INGRESS', priority: 1000, ...rule } }, { timeout: 30_000 });
    await o.waitOp(op.latestResponse as Operation);
  } catch (err) {
    // Another replica made it first.
    if (httpStatus(err) !== 409) throw err;
  }
  return rule.name;
}

/** The agent rule's name, after making sure it exists; undefined when no rule is managed. */
export async function ensureAgentFirewall(
  o: FirewallDeps & { network: string; firewall: GceProviderConfig['firewall']; agentPort: number; controllerId: string },
): Promise<string | undefined> {
  const { allowFromCidrs, allowFromTags, cellTag } = o.firewall;
  if (allowFromCidrs.length === 0 && allowFromTags.length === 0) return undefined;
  return ensureRule(o, {
    name: firewallName(o.controllerId, o.agentPort),
    description: `${DESCRIPTION_PREFIX}${o.controllerId}`,
    network: o.network,
    targetTags: [cellTag],
    allowed: [{ IPProtocol: 'tcp', ports: [String(o.agentPort)] }],
    ...(allowFromCidrs.length ? { sourceRanges: allowFromCidrs } : {}),
    ...(allowFromTags.length ? { sourceTags: allowFromTags } : {}),
  });
}

/** With firewall.allowBetweenCells: pod traffic from cell to cell (TCP, UDP, ICMP), by network tag. */
export function ensureCellTrafficFirewall(o: FirewallDeps & { network: string; firewall: GceProviderConfig['firewall']; controllerId: string }): Promise<string | undefined> {
  if (!o.firewall.allowBetweenCells) return Promise.resolve(undefined);
  return ensureRule(o, {
    name: cellTrafficFirewallName(o.controllerId),
    description: `${CELL_TRAFFIC_PREFIX}${o.controllerId}`,
    network: o.network,
    targetTags: [o.firewall.cellTag],
    sourceTags: [o.firewall.cellTag],
    allowed: [{ IPProtocol: 'tcp' }, { IPProtocol: 'udp' }, { IPProtocol: 'icmp' }],
  });
}

/** Deletes this controller's agent rules whose port is not in keepPorts, and its between-cells rule when no port is; returns their names. */
export async function pruneAgentFirewalls(o: FirewallDeps & { controllerId: string; keepPorts: Set<number> }): Promise<string[]> {
  const removed: string[] = [];
  for await (const fw of o.client.listAsync({ project: o.project }, { timeout: 30_000, autoPaginate: false })) {
    if (!fw.name) continue;
    if (fw.description === `${CELL_TRAFFIC_PREFIX}${o.controllerId}`) {
      // Between cells: needed while any cell lives.
      if (o.keepPorts.size > 0 || fw.name !== cellTrafficFirewallName(o.controllerId)) continue;
    } else {
      if (fw.description !== `${DESCRIPTION_PREFIX}${o.controllerId}`) continue;
      const port = Number(fw.allowed?.[0]?.ports?.[0]);
      if (o.keepPorts.has(port) || fw.name !== firewallName(o.controllerId, port)) continue;
    }
    try {
      const [op] = await o.client.delete({ project: o.project, firewall: fw.name }, { timeout: 30_000 });
      await o.waitOp(op.latestResponse as Operation);
      removed.push(fw.name);
    } catch (err) {
      if (httpStatus(err) !== 404) throw err;
    }
  }
  return removed;
}
