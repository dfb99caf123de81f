#!/usr/bin/env node
// node scripts/bundle-cli.mjs ENTRY OUT (from the package dir): one ESM file holding a CLI and all its JS dependencies.
// Why: a CLI's start-up is mostly Node finding, reading and compiling ~150 modules one by one;
// bundled, `image-puller pull` starts ~70 ms sooner (measured on a cold pull, same run).
// The agent's release bundle (scripts/package/package-agent.mjs) is made by esbuild too.
import { build } from 'esbuild';

const [entry, outfile] = process.argv.slice(2);
if (!entry || !outfile) {
  process.stderr.write('usage: node scripts/bundle-cli.mjs ENTRY OUT\n');
  process.exit(2);
}
await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
  // CommonJS dependencies call require() for Node's own modules; ESM has none by default.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
});
