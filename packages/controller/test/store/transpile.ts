// Child processes in these tests run the real store code. Node 20 cannot load .ts, and tests
// must not depend on a possibly stale dist/, so the sources are transpiled (types stripped, no
// bundling) into a directory inside the package, where `node_modules` resolution still works.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * Transpiles `files` (paths under src/) keeping their layout, so their relative imports resolve,
 * and writes `extra` next to the first of them; `dir` is that directory.
 */
export function transpileSources(files: string[], extra: Record<string, string>): { dir: string; remove(): void } {
  mkdirSync(join(pkg, '.test-results'), { recursive: true });
  const root = mkdtempSync(join(pkg, '.test-results', 'child-'));
  for (const f of files) {
    const js = ts.transpileModule(readFileSync(join(pkg, 'src', f), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    const out = join(root, f.replace(/\.ts$/, '.js'));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, js);
  }
  const dir = join(root, dirname(files[0] ?? '.'));
  for (const [name, text] of Object.entries(extra)) writeFileSync(join(dir, name), text);
  return { dir, remove: () => rmSync(root, { recursive: true, force: true }) };
}
