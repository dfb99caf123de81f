// How cellctl shows pods, cells and events: kubectl's columns and status words, so the output
// reads the same to someone who knows kubectl.
import { stringify as toYaml } from 'yaml';
import { PodPhase, type ContainerStatus } from '@cello/proto/cell';
import { type Cell, CellState, type ClusterEvent, type PodObject } from '@cello/proto/controller';

export function age(from: Date | undefined, now = Date.now()): string {
  if (!from) return '<unknown>';
  const s = Math.max(0, Math.floor((now - from.getTime()) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return `${m}m${s % 60 ? `${s % 60}s` : ''}`;
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

export function phaseName(p: PodPhase | undefined): string {
  switch (p) {
    case PodPhase.POD_PHASE_RUNNING:
      return 'Running';
    case PodPhase.POD_PHASE_SUCCEEDED:
      return 'Succeeded';
    case PodPhase.POD_PHASE_FAILED:
      return 'Failed';
    case PodPhase.POD_PHASE_UNKNOWN:
      return 'Unknown';
    default:
      return 'Pending';
  }
}

/**
 * Where a Pending pod is on its way to running, with its last error and when it is retried:
 * `Launching (InsufficientInstanceCapacity, retry in 20s)`. Undefined once it runs.
 */
export function progressWord(p: PodObject, now = Date.now()): string | undefined {
  const g = p.progress;
  if (!g?.stage || g.stage === 'Running') return undefined;
  const e = g.lastError;
  const retryIn = e?.retryAt && e.retryAt.getTime() > now ? Math.ceil((e.retryAt.getTime() - now) / 1000) : 0;
  if (!e || (e.stage !== g.stage && !retryIn)) return g.stage;
  return `${g.stage} (${e.reason}${retryIn ? `, retry in ${retryIn}s` : ''})`;
}

/** kubectl's STATUS column: the most telling reason, else the phase. */
export function podStatusWord(p: PodObject, now = Date.now()): string {
  const st = p.status;
  if (p.metadata?.deletionTimestamp) return 'Terminating';
  if (!st) return 'Pending';
  if (st.reason && (st.phase === PodPhase.POD_PHASE_FAILED || st.phase === PodPhase.POD_PHASE_PENDING)) return st.reason;
  const inits = st.initContainerStatuses;
  const nInit = p.spec?.initContainers.length ?? 0;
  if (nInit > 0) {
    const done = inits.filter((c) => c.state?.state?.$case === 'terminated' && c.state.state.value.exitCode === 0).length;
    if (done < nInit) {
      const bad = inits.find((c) => c.state?.state?.$case === 'terminated' && c.state.state.value.exitCode !== 0);
      if (bad) return `Init:${bad.state!.state!.$case === 'terminated' ? bad.state!.state!.value.reason || 'Error' : 'Error'}`;
      const waiting = inits.find((c) => c.state?.state?.$case === 'waiting' && c.state.state.value.reason && c.state.state.value.reason !== 'PodInitializing');
      if (waiting && waiting.state!.state!.$case === 'waiting') return `Init:${waiting.state!.state!.value.reason}`;
      return `Init:${done}/${nInit}`;
    }
  }
  let word = phaseName(st.phase);
  for (const c of st.containerStatuses) {
    const s = c.state?.state;
    if (s?.$case === 'waiting' && s.value.reason) word = s.value.reason;
    else if (s?.$case === 'terminated' && st.phase !== PodPhase.POD_PHASE_RUNNING) word = s.value.reason || (s.value.exitCode === 0 ? 'Completed' : 'Error');
  }
  if (st.phase === PodPhase.POD_PHASE_SUCCEEDED) word = 'Completed';
  if (st.phase === PodPhase.POD_PHASE_PENDING) {
    const progress = progressWord(p, now);
    // A retry on its way says more than "Unschedulable"; a container's own reason (ErrImagePull,
    // CrashLoopBackOff) more than the stage.
    if (progress && /retry in/.test(progress)) return progress;
    const sched = st.conditions.find((c) => c.type === 'PodScheduled');
    if (!p.cellId && sched?.reason === 'Unschedulable') return 'Unschedulable';
    if (progress && (word === 'Pending' || word === 'ContainerCreating')) return progress;
  }
  return word;
}

function ready(cs: ContainerStatus[], total: number): string {
  return `${cs.filter((c) => c.ready).length}/${total}`;
}

function restarts(cs: ContainerStatus[]): number {
  return cs.reduce((n, c) => n + c.restartCount, 0);
}

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3)))
          .join('')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export function podRow(p: PodObject, wide: boolean, allNs: boolean): string[] {
  const st = p.status;
  const row = [
    ...(allNs ? [p.metadata?.namespace ?? ''] : []),
    p.metadata?.name ?? '',
    ready(st?.containerStatuses ?? [], p.spec?.containers.length ?? 0),
    podStatusWord(p),
    String(restarts(st?.containerStatuses ?? [])),
    age(p.metadata?.creationTimestamp),
  ];
  if (wide) row.push(st?.podIp || '<none>', p.cellId || '<none>', p.instanceType || '<none>');
  return row;
}

export function podHeader(wide: boolean, allNs: boolean): string[] {
  return [...(allNs ? ['NAMESPACE'] : []), 'NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE', ...(wide ? ['IP', 'CELL', 'INSTANCE-TYPE'] : [])];
}

export function cellStateName(s: CellState): string {
  const n = CellState[s] ?? 'UNKNOWN';
  const short = n.replace('CELL_STATE_', '');
  return short.charAt(0) + short.slice(1).toLowerCase();
}

export function cellRow(c: Cell, wide: boolean): string[] {
  const row = [c.id, cellStateName(c.state), c.instanceType, c.pod?.name ? `${c.pod.namespace || 'default'}/${c.pod.name}` : '<none>', age(c.createdAt)];
  if (wide) row.push(c.instanceId || '<none>', c.address || '<none>', c.spot ? 'spot' : 'on-demand', `$${c.hourlyPrice.toFixed(4)}/h`, c.reason || '');
  return row;
}

export function cellHeader(wide: boolean): string[] {
  return ['NAME', 'STATE', 'INSTANCE-TYPE', 'POD', 'AGE', ...(wide ? ['INSTANCE', 'ADDRESS', 'LIFECYCLE', 'PRICE', 'REASON'] : [])];
}

export function render(format: 'json' | 'yaml', data: unknown): string {
  return format === 'json' ? JSON.stringify(data, null, 2) + '\n' : toYaml(data);
}

function stateLine(c: ContainerStatus): string[] {
  const s = c.state?.state;
  const out: string[] = [];
  if (s?.$case === 'running') out.push(`    State:          Running`, `      Started:      ${s.value.startedAt?.toISOString() ?? ''}`);
  else if (s?.$case === 'waiting')
    out.push(`    State:          Waiting`, `      Reason:       ${s.value.reason}`, ...(s.value.message ? [`      Message:      ${s.value.message}`] : []));
  else if (s?.$case === 'terminated') {
    out.push(`    State:          Terminated`, `      Reason:       ${s.value.reason}`, `      Exit Code:    ${s.value.exitCode}`);
    if (s.value.message) out.push(`      Message:      ${s.value.message}`);
  } else out.push(`    State:          <unknown>`);
  out.push(`    Ready:          ${c.ready ? 'True' : 'False'}`, `    Restart Count:  ${c.restartCount}`);
  return out;
}

export function describePod(p: PodObject, cell: Cell | undefined, events: ClusterEvent[]): string {
  const m = p.metadata!;
  const st = p.status;
  const lines: string[] = [
    `Name:           ${m.name}`,
    `Namespace:      ${m.namespace}`,
    `UID:            ${m.uid}`,
    `Created:        ${m.creationTimestamp?.toISOString() ?? ''}`,
    `Generation:     ${m.generation}`,
    `Labels:         ${
      Object.entries(m.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(', ') || '<none>'
    }`,
    `Annotations:    ${
      Object.entries(m.annotations)
        .map(([k, v]) => `${k}=${v}`)
        .join(', ') || '<none>'
    }`,
    `Status:         ${podStatusWord(p)}`,
    `Phase:          ${phaseName(st?.phase)}`,
  ];
  if (st?.reason) lines.push(`Reason:         ${st.reason}`);
  if (st?.message) lines.push(`Message:        ${st.message}`);
  lines.push(...progressLines(p));
  lines.push(`IP:             ${st?.podIp || '<none>'}`);
  lines.push(`Cell:           ${p.cellId || '<none>'}`);
  lines.push(`Instance Type:  ${p.instanceType || '<none>'}`);
  if (cell) {
    lines.push(`Cell State:     ${cellStateName(cell.state)}${cell.reason ? ` (${cell.reason})` : ''}`);
    lines.push(`Instance:       ${cell.instanceId || '<none>'} ${cell.spot ? 'spot' : 'on-demand'} $${cell.hourlyPrice.toFixed(4)}/h ${cell.address}`);
  }
  const section = (title: string, specs: { name: string; image: string }[], statuses: ContainerStatus[]) => {
    if (specs.length === 0) return;
    lines.push(`${title}:`);
    for (const c of specs) {
      lines.push(`  ${c.name}:`, `    Image:          ${c.image}`);
      const s = statuses.find((x) => x.name === c.name);
      if (s) lines.push(...stateLine(s));
    }
  };
  section('Init Containers', p.spec?.initContainers ?? [], st?.initContainerStatuses ?? []);
  section('Containers', p.spec?.containers ?? [], st?.containerStatuses ?? []);
  lines.push('Conditions:');
  const conds = st?.conditions ?? [];
  if (conds.length === 0) lines.push('  <none>');
  else {
    const rows = [['  Type', 'Status', 'Reason', 'Message']];
    for (const c of conds) rows.push([`  ${c.type}`, ['Unspecified', 'True', 'False', 'Unknown'][c.status] ?? 'Unknown', c.reason, c.message]);
    lines.push(table(rows).trimEnd());
  }
  lines.push('Events:');
  if (events.length === 0) lines.push('  <none>');
  else {
    const rows = [['  Type', 'Reason', 'Age', 'From', 'Message']];
    for (const e of events) rows.push([`  ${e.type}`, e.reason, age(e.time), e.source + (e.container ? `/${e.container}` : ''), e.message]);
    lines.push(table(rows).trimEnd());
  }
  return lines.join('\n') + '\n';
}

const clock = (d: Date | undefined) => (d ? d.toISOString().replace(/\.\d{3}Z$/, 'Z') : '');

/** describe's Stage and Timeline: where the pod is, since when, its deadline, attempts, last error, and each stage it went through. */
export function progressLines(p: PodObject, now = Date.now()): string[] {
  const g = p.progress;
  if (!g?.stage) return [];
  const out: string[] = [];
  const since = g.since ? ` since ${clock(g.since)} (${age(g.since, now)})` : '';
  out.push(`Stage:          ${g.stage}${since}`);
  if (g.stage !== 'Running') {
    if (g.deadline) {
      const left = Math.round((g.deadline.getTime() - now) / 1000);
      out.push(`Deadline:       ${clock(g.deadline)} (${left >= 0 ? `in ${left}s` : `${-left}s ago`})`);
    }
  }
  if (g.attempts) out.push(`Attempts:       ${g.attempts} failed`);
  const e = g.lastError;
  if (e) {
    const retry = e.retryAt && e.retryAt.getTime() > now ? `; retry in ${Math.ceil((e.retryAt.getTime() - now) / 1000)}s` : '';
    out.push(`Last Error:     ${e.reason} while ${e.stage || g.stage}, ${age(e.time, now)} ago${retry}: ${e.message}`);
  }
  if (g.history.length) {
    out.push('Timeline:');
    const rows = [['  Stage', 'Entered', 'Age', 'Message']];
    for (const h of g.history) rows.push([`  ${h.stage}`, clock(h.since), age(h.since, now), h.message]);
    out.push(table(rows).trimEnd());
  }
  return out;
}
