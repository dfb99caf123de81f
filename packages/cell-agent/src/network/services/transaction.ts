// nftables transactions (one `nft -f` input, applied atomically by the kernel) that take the
// table from one rendered state to the next. A full sync replaces the whole table; a partial
// sync touches only what changed, so one endpoint change costs the same with 10 Services as
// with 10,000.
import { LEGACY_TABLE, TABLE, balancerCommands, baseCommands, elementKey, type ServiceRules } from './ruleset.js';

export type Rendered = ReadonlyMap<string, ServiceRules>;

/** The whole table, from nothing (or from whatever is there: it is deleted first). */
export function fullTransaction(next: Rendered): string {
  // `add` before `delete` makes the delete valid whether or not the table exists.
  const out = [`add table ${LEGACY_TABLE}`, `delete table ${LEGACY_TABLE}`, `add table ${TABLE}`, `delete table ${TABLE}`, `add table ${TABLE}`, ...baseCommands()];
  for (const name of balancersOf(next)) out.push(...balancerCommands(name).add);
  for (const s of next.values()) for (const [name, spec] of s.sets) out.push(addSet(name, spec));
  for (const s of next.values()) for (const name of s.chains.keys()) out.push(`add chain ${TABLE} ${name}`);
  for (const s of next.values()) for (const [name, rules] of s.chains) for (const rule of rules) out.push(`add rule ${TABLE} ${name} ${rule}`);
  // Every Service's element strings, gathered by map (no per-element object or string made here).
  const byMap = new Map<string, string[]>();
  for (const s of next.values()) {
    for (const [map, elements] of s.elements) {
      const list = byMap.get(map);
      if (list) for (const e of elements) list.push(e);
      else byMap.set(map, elements.slice());
    }
  }
  for (const [map, elements] of byMap) out.push(addElements(map, elements));
  return out.join('\n') + '\n';
}

/** What changed between two states; '' when nothing did. */
export function partialTransaction(prev: Rendered, next: Rendered): string {
  const addSets: string[] = [];
  const addChains: string[] = [];
  const rewrite: string[] = [];
  const removedElements = new Map<string, string[]>();
  const addedElements = new Map<string, string[]>();
  const flushGone: string[] = [];
  const deleteGone: string[] = [];
  for (const key of new Set([...prev.keys(), ...next.keys()])) {
    const a = prev.get(key);
    const b = next.get(key);
    if (a === b) continue;
    const oldChains = a?.chains ?? new Map<string, string[]>();
    const newChains = b?.chains ?? new Map<string, string[]>();
    const oldSets = a?.sets ?? new Map<string, string>();
    const newSets = b?.sets ?? new Map<string, string>();
    for (const [name, spec] of newSets) if (!oldSets.has(name)) addSets.push(addSet(name, spec));
    for (const [name, rules] of newChains) {
      const old = oldChains.get(name);
      if (old === undefined) addChains.push(`add chain ${TABLE} ${name}`);
      else if (sameRules(old, rules)) continue;
      else rewrite.push(`flush chain ${TABLE} ${name}`);
      for (const rule of rules) rewrite.push(`add rule ${TABLE} ${name} ${rule}`);
    }
    for (const map of new Set([...(a?.elements.keys() ?? []), ...(b?.elements.keys() ?? [])])) {
      const olds = a?.elements.get(map) ?? [];
      const news = b?.elements.get(map) ?? [];
      if (sameRules(olds, news)) continue;
      const oldSet = new Set(olds);
      const newSet = new Set(news);
      for (const e of olds) if (!newSet.has(e)) push(removedElements, map, e);
      for (const e of news) if (!oldSet.has(e)) push(addedElements, map, e);
    }
    // A chain that goes is emptied first, so no other going chain still jumps to it when it is
    // deleted; map elements naming it were removed above.
    for (const name of oldChains.keys()) {
      if (newChains.has(name)) continue;
      flushGone.push(`flush chain ${TABLE} ${name}`);
      deleteGone.push(`delete chain ${TABLE} ${name}`);
    }
    for (const name of oldSets.keys()) if (!newSets.has(name)) deleteGone.push(`delete set ${TABLE} ${name}`);
  }
  // Shared balancers: created before the elements that use them, deleted after the last goes.
  // Which ones are in use is a walk over every Service's small set, in memory only: the
  // transaction itself still holds only what changed.
  const before = balancersOf(prev);
  const after = balancersOf(next);
  const addBalancers = [...after].filter((b) => !before.has(b)).flatMap((b) => balancerCommands(b).add);
  const removeBalancers = [...before].filter((b) => !after.has(b)).flatMap((b) => balancerCommands(b).remove);
  // Element deletes come before adds of the same key (a changed verdict is a delete and an add).
  const out = [
    ...addBalancers,
    ...addSets,
    ...addChains,
    ...rewrite,
    ...[...removedElements].map(([map, elements]) => `delete element ${TABLE} ${map} { ${elements.map(elementKey).join(' , ')} }`),
    ...[...addedElements].map(([map, elements]) => addElements(map, elements)),
    ...flushGone,
    ...deleteGone,
    ...removeBalancers,
  ];
  return out.length === 0 ? '' : out.join('\n') + '\n';
}

function addSet(name: string, spec: string): string {
  return `add set ${TABLE} ${name} ${spec}`;
}

function balancersOf(rendered: Rendered): Set<string> {
  const out = new Set<string>();
  for (const s of rendered.values()) for (const b of s.balancers) out.add(b);
  return out;
}

// One command per map: nft parses a command with a thousand elements far faster than a
// thousand commands.
function addElements(map: string, elements: readonly string[]): string {
  return `add element ${TABLE} ${map} { ${elements.join(' , ')} }`;
}

function push(m: Map<string, string[]>, key: string, value: string): void {
  const list = m.get(key);
  if (list) list.push(value);
  else m.set(key, [value]);
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}
