// Child processes in these tests run the real store code. Node 20 cannot load .ts, and tests
// must not depend on a possibly stale dist/, so the sources are transpiled (types stripped, no
// bundling) into a directory inside the package, where `node_modules` resolution still works.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export function transpileSources(files: string[], extra: Record<string, string>): { dir: string; remove(): void } {
  mkdirSync(join(pkg, '.test-results'), { recursive: true });
  const dir = mkdtempSync(join(pkg, '.test-results', 'child-'));
  for (const f of files) {
    const js = ts.transpileModule(readFileSync(join(pkg, 'src', f), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    writeFileSync(join(dir, f.split('/').pop()!.replace(/\.ts$/, '.js')), js);
  }
  for (const [name, text] of Object.entries(extra)) writeFileSync(join(dir, name), text);
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
