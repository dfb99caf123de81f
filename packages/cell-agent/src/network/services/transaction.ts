// nftables transactions (one `nft -f` input, applied atomically by the kernel) that take the
// table from one rendered state to the next. A full sync replaces the whole table; a partial
// sync touches only what changed, so one endpoint change costs the same with 10 Services as
// with 10,000.
import { LEGACY_TABLE, TABLE, balancerCommands, baseCommands, type MapElement, type ServiceRules } from './ruleset.js';

export type Rendered = ReadonlyMap<string, ServiceRules>;

/** The whole table, from nothing (or from whatever is there: it is deleted first). */
export function fullTransaction(next: Rendered): string {
  // `add` before `delete` makes the delete valid whether or not the table exists.
  const out = [`add table ${LEGACY_TABLE}`, `delete table ${LEGACY_TABLE}`, `add table ${TABLE}`, `delete table ${TABLE}`, `add table ${TABLE}`, ...baseCommands()];
  const all = [...next.values()];
  for (const name of balancersOf(next)) out.push(...balancerCommands(name).add);
  for (const s of all) for (const [name, spec] of s.sets) out.push(addSet(name, spec));
  for (const s of all) for (const name of s.chains.keys()) out.push(`add chain ${TABLE} ${name}`);
  for (const s of all) for (const [name, rules] of s.chains) for (const rule of rules) out.push(`add rule ${TABLE} ${name} ${rule}`);
  out.push(...addElements(all.flatMap((s) => s.elements)));
  return out.join('\n') + '\n';
}

/** What changed between two states; '' when nothing did. */
export function partialTransaction(prev: Rendered, next: Rendered): string {
  const addSets: string[] = [];
  const addChains: string[] = [];
  const rewrite: string[] = [];
  const removedElements: MapElement[] = [];
  const addedElements: MapElement[] = [];
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
    const oldElements = new Map((a?.elements ?? []).map((e) => [elementId(e), e]));
    const newElements = new Map((b?.elements ?? []).map((e) => [elementId(e), e]));
    for (const [id, e] of oldElements) if (!newElements.has(id)) removedElements.push(e);
    for (const [id, e] of newElements) if (!oldElements.has(id)) addedElements.push(e);
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
    ...deleteElements(removedElements),
    ...addElements(addedElements),
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
function addElements(es: MapElement[]): string[] {
  return [...byMap(es)].map(([map, list]) => `add element ${TABLE} ${map} { ${list.map((e) => `${e.key} : ${e.value}`).join(' , ')} }`);
}

function deleteElements(es: MapElement[]): string[] {
  return [...byMap(es)].map(([map, list]) => `delete element ${TABLE} ${map} { ${list.map((e) => e.key).join(' , ')} }`);
}

function byMap(es: MapElement[]): Map<string, MapElement[]> {
  const m = new Map<string, MapElement[]>();
  for (const e of es) {
    const list = m.get(e.map);
    if (list) list.push(e);
    else m.set(e.map, [e]);
  }
  return m;
}

function elementId(e: MapElement): string {
  return `${e.map}|${e.key}|${e.value}`;
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}
