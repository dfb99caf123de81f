// `cellctl top pods|cells`: usage read from the agents' Stats (the same call the virtual node's
// /stats/summary makes for metrics-server), one call per cell at once, each with a deadline;
// a cell that does not answer is named rather than left out silently.
import { ContainerUsage, PodUsage, CellUsage, CellState, type Cell, type PodObject } from '@cello/proto/controller';
import { PodPhase, type StatsResponse } from '@cello/proto/cell';
import { callUnary, type AgentAccess } from '../agents/pool.js';
import { errMsg } from '../util/errors.js';

const STATS_TIMEOUT_MS = 5000;

function serving(c: Cell | undefined): c is Cell {
  return !!c?.address && (c.state === CellState.CELL_STATE_READY || c.state === CellState.CELL_STATE_BOUND || c.state === CellState.CELL_STATE_DRAINING);
}

function stats(agents: AgentAccess, c: Cell): Promise<StatsResponse> {
  return callUnary<StatsResponse>(agents.get(c.id, c.address), 'stats', {}, STATS_TIMEOUT_MS);
}

/** Running pods' usage: their containers' units (init containers and the agent's own units left out). */
export async function topPods(agents: AgentAccess, pods: PodObject[], cells: Cell[]): Promise<{ pods: PodUsage[]; unavailable: string[] }> {
  const byId = new Map(cells.map((c) => [c.id, c]));
  const unavailable: string[] = [];
  const running = pods.filter((p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING && p.cellId);
  const out = await Promise.all(
    running.map(async (p) => {
      const name = `${p.metadata?.namespace}/${p.metadata?.name}`;
      const cell = byId.get(p.cellId);
      if (!serving(cell)) {
        unavailable.push(`${name}: cell ${p.cellId} is not serving`);
        return undefined;
      }
      try {
        const s = await stats(agents, cell);
        const names = new Set((p.spec?.containers ?? []).map((c) => c.name));
        const containers = s.units
          .filter((u) => names.has(u.name))
          .map((u) =>
            ContainerUsage.fromPartial({
              name: u.name,
              cpuCores: u.cpuCores,
              memoryWorkingSetBytes: u.memoryWorkingSetBytes,
              cpuUsageNanos: u.cpuUsageNanos,
              memoryUsageBytes: u.memoryUsageBytes,
              memoryRssBytes: u.memoryRssBytes,
            }),
          );
        return PodUsage.fromPartial({
          pod: { namespace: p.metadata?.namespace ?? 'default', name: p.metadata?.name ?? '' },
          cellId: cell.id,
          cpuCores: containers.reduce((a, c) => a + c.cpuCores, 0),
          memoryWorkingSetBytes: containers.reduce((a, c) => a + c.memoryWorkingSetBytes, 0),
          containers,
          ...(s.time ? { time: s.time } : {}),
        });
      } catch (err) {
        unavailable.push(`${name}: ${errMsg(err)}`);
        return undefined;
      }
    }),
  );
  return { pods: out.filter((x): x is PodUsage => !!x), unavailable: unavailable.sort() };
}

/** Every serving cell's own figures (the whole instance, agent included). */
export async function topCells(agents: AgentAccess, cells: Cell[]): Promise<{ cells: CellUsage[]; unavailable: string[] }> {
  const unavailable: string[] = [];
  const out = await Promise.all(
    cells.filter(serving).map(async (c) => {
      try {
        const s = await stats(agents, c);
        return CellUsage.fromPartial({
          cellId: c.id,
          instanceType: c.instanceType,
          ...(c.pod ? { pod: c.pod } : {}),
          cpuCores: s.cell?.cpuCores ?? 0,
          cpuCount: s.cell?.cpuCount ?? 0,
          memoryUsedBytes: s.cell?.memoryUsedBytes ?? 0,
          memoryTotalBytes: s.cell?.memoryTotalBytes ?? 0,
          ...(s.time ? { time: s.time } : {}),
        });
      } catch (err) {
        unavailable.push(`${c.id}: ${errMsg(err)}`);
        return undefined;
      }
    }),
  );
  return { cells: out.filter((x): x is CellUsage => !!x).sort((a, b) => a.cellId.localeCompare(b.cellId)), unavailable: unavailable.sort() };
}
