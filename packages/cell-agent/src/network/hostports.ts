// hostPort on a cell: the cell's own address:hostPort is DNATed to the pod's address and
// containerPort, per protocol, as the CNI portmap plugin does on a node. The rules live in a
// table of their own (`ip cello-hostports`), replaced whole in one nft transaction whenever the
// pod's ports change (a pod has a handful), beside the Service proxy's `ip cello` table.
import type { Pod } from '@cello/proto/cell';
import { protocolName } from '../pod/validate.js';
import { runNft, type NftOptions } from './services/nft.js';

export const HOSTPORTS_TABLE = 'ip cello-hostports';

export interface HostPortMapping {
  protocol: 'tcp' | 'udp' | 'sctp';
  hostPort: number;
  /** The one cell address to serve on; '' for all of them. */
  hostIp: string;
  podIp: string;
  containerPort: number;
}

/**
 * The mappings a pod asks for. A hostNetwork pod listens on the cell's addresses itself (its
 * hostPorts equal its containerPorts), so it needs none.
 */
export function hostPortMappings(pod: Pod | undefined, podIp: string): HostPortMapping[] {
  const spec = pod?.spec;
  if (!spec || spec.hostNetwork) return [];
  return [...spec.initContainers, ...spec.containers].flatMap((c) =>
    c.ports
      .filter((p) => p.hostPort > 0)
      .map((p) => ({
        protocol: protocolName(p.protocol).toLowerCase() as HostPortMapping['protocol'],
        hostPort: p.hostPort,
        hostIp: p.hostIp,
        podIp,
        containerPort: p.containerPort,
      })),
  );
}

/** The transaction that makes the table hold exactly `mappings` (none: the table is removed). */
export function hostPortTransaction(mappings: readonly HostPortMapping[]): string {
  const t = HOSTPORTS_TABLE;
  // `add` then `delete` removes a table that may or may not exist, in the same transaction.
  const lines = [`add table ${t}`, `delete table ${t}`];
  if (mappings.length > 0) {
    lines.push(`add table ${t}`, `add chain ${t} hostports`);
    for (const m of mappings) {
      // Traffic for the cell's own addresses only (not loopback, which stays the pod's own).
      const to = m.hostIp ? `ip daddr ${m.hostIp}` : 'fib daddr type local ip daddr != 127.0.0.0/8';
      lines.push(`add rule ${t} hostports ${to} meta l4proto ${m.protocol} th dport ${m.hostPort} dnat to ${m.podIp}:${m.containerPort}`);
    }
    // Before the Service proxy's NAT chains (-100): a hostPort is the cell's own port.
    for (const [chain, hook] of [
      ['prerouting', 'prerouting'],
      ['output', 'output'],
    ] as const) {
      lines.push(`add chain ${t} ${chain} { type nat hook ${hook} priority -110 ; policy accept ; }`, `add rule ${t} ${chain} jump hostports`);
    }
  }
  return lines.join('\n') + '\n';
}

/** Keeps the cell's hostPort table equal to the pod's mappings; one nft run per change. */
export class HostPorts {
  private applied = '';
  private running: Promise<void> = Promise.resolve();

  constructor(private readonly o: NftOptions = {}) {}

  sync(mappings: readonly HostPortMapping[]): Promise<void> {
    const next = (this.running = this.running.catch(() => undefined).then(() => this.apply(mappings)));
    return next;
  }

  private async apply(mappings: readonly HostPortMapping[]): Promise<void> {
    const tx = hostPortTransaction(mappings);
    // A cell that never had hostPorts needs no nft at all.
    if (tx === this.applied || (this.applied === '' && mappings.length === 0)) return;
    await runNft(tx, this.o);
    this.applied = tx;
  }
}
