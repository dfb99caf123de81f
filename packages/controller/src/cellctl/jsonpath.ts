// kubectl's `-o jsonpath=TEMPLATE`: text outside braces is printed as it is, `{.path}` prints
// what the path selects (several results joined by a space), `{range .path}...{end}` repeats its
// body for each result, `{"\n"}` prints a quoted literal. The paths themselves (`.a.b`,
// `[*]`, `[0]`, `[1:3]`, `..name`, `['k.e.y']`, `[?(@.type=="Ready")]`) are evaluated by
// jsonpath-plus. As in kubectl, a path that selects nothing prints nothing
// (--allow-missing-template-keys, true by default there).
import { JSONPath } from 'jsonpath-plus';

export class JsonPathError extends Error {}

type Node = { kind: 'text'; text: string } | { kind: 'path'; path: string } | { kind: 'range'; path: string; body: Node[] };

/** Splits the template into text and `{...}` actions; braces inside quotes do not count. */
function tokenize(template: string): Array<{ action: boolean; text: string }> {
  const out: Array<{ action: boolean; text: string }> = [];
  let i = 0;
  while (i < template.length) {
    const open = template.indexOf('{', i);
    if (open < 0) {
      out.push({ action: false, text: template.slice(i) });
      break;
    }
    if (open > i) out.push({ action: false, text: template.slice(i, open) });
    let j = open + 1;
    let quote: string | undefined;
    let depth = 0;
    for (; j < template.length; j++) {
      const c = template[j]!;
      if (quote) {
        if (c === '\\') j++;
        else if (c === quote) quote = undefined;
      } else if (c === '"' || c === "'") quote = c;
      else if (c === '{') depth++;
      else if (c === '}') {
        if (depth === 0) break;
        depth--;
      }
    }
    if (j >= template.length) throw new JsonPathError(`unclosed action in template ${JSON.stringify(template)}`);
    out.push({ action: true, text: template.slice(open + 1, j).trim() });
    i = j + 1;
  }
  return out;
}

function unquote(s: string): string {
  try {
    return s.startsWith("'") ? s.slice(1, -1) : (JSON.parse(s) as string);
  } catch {
    throw new JsonPathError(`invalid string literal ${s}`);
  }
}

export function parseTemplate(template: string): Node[] {
  const root: Node[] = [];
  const stack: Node[][] = [root];
  for (const t of tokenize(template)) {
    const top = stack[stack.length - 1]!;
    if (!t.action) top.push({ kind: 'text', text: t.text });
    else if (t.text === 'end') {
      if (stack.length === 1) throw new JsonPathError('{end} without {range}');
      stack.pop();
    } else if (t.text.startsWith('range ')) {
      const node: Node = { kind: 'range', path: t.text.slice(6).trim(), body: [] };
      top.push(node);
      stack.push(node.body);
    } else if (/^(["']).*\1$/s.test(t.text)) top.push({ kind: 'text', text: unquote(t.text) });
    else if (t.text === '') throw new JsonPathError('empty action {} in template');
    else top.push({ kind: 'path', path: t.text });
  }
  if (stack.length > 1) throw new JsonPathError('{range} without {end}');
  return root;
}

function select(path: string, data: unknown): unknown[] {
  let p = path;
  if (p === '@' || p === '$') return [data];
  if (p.startsWith('@') || p.startsWith('$')) p = p.slice(1);
  if (!p.startsWith('.') && !p.startsWith('[')) p = `.${p}`;
  // kubectl's escaped dots (`.labels.app\.kubernetes\.io/name`) as a quoted member.
  p = p.replace(/\.((?:[^.[\\]|\\.)*\\\.(?:[^.[\\]|\\.)*)/g, (_, name: string) => `['${name.replace(/\\(.)/g, '$1').replace(/'/g, "\\'")}']`);
  try {
    return JSONPath({ path: `$${p}`, json: data as object, wrap: true, eval: 'safe' }) as unknown[];
  } catch (err) {
    throw new JsonPathError(`invalid path ${JSON.stringify(path)}: ${(err as Error).message}`);
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function run(nodes: Node[], data: unknown): string {
  let out = '';
  for (const n of nodes) {
    if (n.kind === 'text') out += n.text;
    else if (n.kind === 'path') out += select(n.path, data).map(show).join(' ');
    else {
      // A range over one array iterates its elements, as kubectl does for `{range .items}`.
      let items = select(n.path, data);
      if (items.length === 1 && Array.isArray(items[0])) items = items[0] as unknown[];
      for (const item of items) out += run(n.body, item);
    }
  }
  return out;
}

/** The template applied to `data` (a kubectl-shaped object or List). */
export function jsonPath(template: string, data: unknown): string {
  return run(parseTemplate(template), data);
}
