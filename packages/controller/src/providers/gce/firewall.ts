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

/** The rule's name, after making sure it exists; undefined when no rule is managed. */
export async function ensureAgentFirewall(
  o: FirewallDeps & { network: string; firewall: GceProviderConfig['firewall']; agentPort: number; controllerId: string },
): Promise<string | undefined> {
  const { allowFromCidrs, allowFromTags, cellTag } = o.firewall;
  if (allowFromCidrs.length === 0 && allowFromTags.length === 0) return undefined;
  const name = firewallName(o.controllerId, o.agentPort);
  try {
    await o.client.get({ project: o.project, firewall: name }, { timeout: 30_000 });
    return name;
  } catch (err) {
    if (httpStatus(err) !== 404) throw err;
  }
  try {
    const [op] = await o.client.insert(
      {
        project: o.project,
        firewallResource: {
          name,
          description: `${DESCRIPTION_PREFIX}${o.controllerId}`,
          network: o.network,
          direction: 'INGRESS',
          priority: 1000,
          targetTags: [cellTag],
          allowed: [{ IPProtocol: 'tcp', ports: [String(o.agentPort)] }],
          ...(allowFromCidrs.length ? { sourceRanges: allowFromCidrs } : {}),
          ...(allowFromTags.length ? { sourceTags: allowFromTags } : {}),
        },
      },
      { timeout: 30_000 },
    );
    await o.waitOp(op.latestResponse as Operation);
  } catch (err) {
    // Another replica made it first.
    if (httpStatus(err) !== 409) throw err;
  }
  return name;
}

/** Deletes this controller's agent rules whose port is not in keepPorts; returns their names. */
export async function pruneAgentFirewalls(o: FirewallDeps & { controllerId: string; keepPorts: Set<number> }): Promise<string[]> {
  const removed: string[] = [];
  for await (const fw of o.client.listAsync({ project: o.project }, { timeout: 30_000, autoPaginate: false })) {
    if (fw.description !== `${DESCRIPTION_PREFIX}${o.controllerId}` || !fw.name) continue;
    const port = Number(fw.allowed?.[0]?.ports?.[0]);
    if (o.keepPorts.has(port) || fw.name !== firewallName(o.controllerId, port)) continue;
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
