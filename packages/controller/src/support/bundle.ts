// `cellctl dump`: one tar.gz for a support request. What the store holds (pods without their
// secrets or configMap data, cells without their sealed bootstrap, events, the session audit),
// the configuration with every secret redacted, this controller's recent log lines, and the
// versions of the controller and of every agent that answers. Whatever is built here passes
// through redactSecrets before it is written; a test searches the archive for a secret's value.
import { arch, platform, release } from 'node:os';
import { AgentInfo, type AgentLogChunk } from '@cello/proto/cell';
import { Cell, ClusterEvent, PodObject, CellState, AuditSession } from '@cello/proto/controller';
import { stringify } from 'yaml';
import { callUnary, type AgentAccess } from '../agents/pool.js';
import { AUDIT } from '../api/session-audit.js';
import { CELLS, EVENTS, PODS, cellOf, podOf, type CellRecord } from '../cells/schema.js';
import type { PodRecordWithData } from '../cells/pod-secrets.js';
import type { Store } from '../store/store.js';
import { errMsg } from '../util/errors.js';
import { VERSION } from '../version.js';
import { redactSecrets } from './redact.js';
import { tarGz, type TarEntry } from './tar.js';

export interface SupportSources {
  /** The controller's configuration (parsed); redacted here. */
  config?: unknown;
  /** This process's recent log lines (LineRing from @cello/proto). */
  logs?: () => string;
}

export interface BundleInput extends SupportSources {
  store: Store;
  agents: AgentAccess;
  controllerId: string;
  providerName: string;
  /** The newest events only; 0: all. */
  eventLimit?: number;
}

const DIR = 'cello-support';
const json = (v: unknown) => `${JSON.stringify(redactSecrets(v), null, 2)}\n`;

export async function buildSupportBundle(o: BundleInput): Promise<Buffer> {
  const at = new Date();
  const [pods, cells, events, audit] = await Promise.all([
    o.store.list<PodRecordWithData>(PODS),
    o.store.list<CellRecord>(CELLS),
    o.store.list<unknown>(EVENTS),
    o.store.list<unknown>(AUDIT),
  ]);
  const podObjects = pods.items.map((kv) => {
    const obj = PodObject.toJSON(podOf(kv.value)) as Record<string, unknown>;
    // How the pod's secrets are kept (a support question: is the key configured?); never their
    // contents. The pod's spec names the Secrets and ConfigMaps it references.
    const secretsAtRest = kv.value.sealedSecrets !== undefined ? 'sealed' : kv.value.secrets && Object.keys(kv.value.secrets).length ? 'unsealed' : 'none';
    return { ...obj, secretsAtRest, carriedConfigMaps: Object.keys(kv.value.configMaps ?? {}).sort() };
  });
  const cellObjects = cells.items.map((kv) => cellOf(kv.value));
  let evs = events.items.map((kv) => ClusterEvent.fromJSON(kv.value)).sort((a, b) => (a.time?.getTime() ?? 0) - (b.time?.getTime() ?? 0));
  if (o.eventLimit) evs = evs.slice(-o.eventLimit);
  const live = cellObjects.filter(serving);
  const [agents, agentLogs] = await Promise.all([agentVersions(o.agents, live), Promise.all(live.map((c) => agentLog(o.agents, c)))]);
  const entries: TarEntry[] = [
    {
      name: `${DIR}/README.txt`,
      data:
        `Cello support bundle of controller ${o.controllerId}, made ${at.toISOString()}.\n` +
        'versions.json      controller, Node.js, OS, store, provider; each serving cell agent (or why it did not answer)\n' +
        'config.yaml        the configuration, secrets redacted\n' +
        'pods.json          the stored pods (spec, status, progress); secret and configMap contents are never included\n' +
        'cells.json         the stored cells\n' +
        'events.json        the stored events, oldest first\n' +
        'audit.json         exec, attach and port-forward sessions the controller relayed\n' +
        'controller.log     the recent log lines of the controller that made this bundle\n' +
        `agents/CELL.log    the last ${AGENT_LOG_LINES} lines of each serving cell agent's own log\n`,
    },
    {
      name: `${DIR}/versions.json`,
      data: json({
        controller: { version: VERSION, controllerId: o.controllerId, provider: o.providerName, store: o.store.kind },
        node: process.version,
        os: { platform: platform(), release: release(), arch: arch() },
        agents,
        madeAt: at.toISOString(),
      }),
    },
    { name: `${DIR}/config.yaml`, data: o.config === undefined ? '# not available to this API server\n' : stringify(redactSecrets(o.config)) },
    { name: `${DIR}/pods.json`, data: json(podObjects) },
    { name: `${DIR}/cells.json`, data: json(cellObjects.map((c) => Cell.toJSON(c))) },
    { name: `${DIR}/events.json`, data: json(evs.map((e) => ClusterEvent.toJSON(e))) },
    { name: `${DIR}/audit.json`, data: json(audit.items.map((kv) => AuditSession.toJSON(AuditSession.fromJSON(kv.value)))) },
    { name: `${DIR}/controller.log`, data: o.logs ? redactLogLines(o.logs()) : '# this API server keeps no log lines (embedded use)\n' },
    ...live.map((c, i) => ({ name: `${DIR}/agents/${c.id}.log`, data: agentLogs[i]! })),
  ];
  return await tarGz(entries, Math.floor(at.getTime() / 1000));
}

const AGENT_LOG_LINES = 2000;

function serving(c: Cell): boolean {
  return !!c.address && (c.state === CellState.CELL_STATE_READY || c.state === CellState.CELL_STATE_BOUND || c.state === CellState.CELL_STATE_DRAINING);
}

/** The agent's own log tail (AgentLogs), redacted; what went wrong instead when it does not answer. */
async function agentLog(agents: AgentAccess, c: Cell): Promise<string> {
  const stream = agents.get(c.id, c.address).agentLogs({ tailLines: AGENT_LOG_LINES, follow: false }, { deadline: Date.now() + 10_000 });
  let text = '';
  try {
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (chunk: AgentLogChunk) => (text += chunk.text));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    return redactLogLines(text);
  } catch (err) {
    return `# the agent's log could not be read: ${errMsg(err)}\n`;
  }
}

async function agentVersions(agents: AgentAccess, live: Cell[]): Promise<unknown[]> {
  return Promise.all(
    live.map(async (c) => {
      try {
        const info = await callUnary<AgentInfo>(agents.get(c.id, c.address), 'getInfo', {}, 5000);
        return { cellId: c.id, ...(AgentInfo.toJSON(info) as object) };
      } catch (err) {
        return { cellId: c.id, error: errMsg(err) };
      }
    }),
  );
}

/** Log lines are JSON (pino, already redacted by field); each is redacted again, defensively. */
function redactLogLines(text: string): string {
  return text
    .split('\n')
    .map((line) => {
      if (!line.trim()) return line;
      try {
        return JSON.stringify(redactSecrets(JSON.parse(line)));
      } catch {
        return line;
      }
    })
    .join('\n');
}
