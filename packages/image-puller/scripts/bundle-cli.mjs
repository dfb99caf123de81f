#!/usr/bin/env node
// node scripts/bundle-cli.mjs ENTRY OUT (from the package dir): one ESM file holding a CLI and all its JS dependencies.
// Why: a CLI's start-up is mostly Node finding, reading and compiling ~150 modules one by one;
// bundled, `image-puller pull` starts ~70 ms sooner (measured on a cold pull, same run).
// The agent's release bundle (scripts/package/package-agent.mjs) is made by esbuild too.
import { build } from 'esbuild';

/**
 * The puller uses one thing of undici, its Agent (with the request() API on it). undici's index
 * also loads fetch, WebSocket, cookies, caches and mocks at start-up: 25 ms of CPU (`--help`, 0.12
 * -> 0.095 s, 7 runs each) before a pull can even start. The CLI bundle gets the Agent and the
 * request API alone, wired as undici's index wires them; the library (dist/index.js, the agent's
 * bundle) imports undici as usual.
 */
const undiciAgentOnly = {
  name: 'undici-agent-only',
  setup(b) {
    b.onResolve({ filter: /^undici$/ }, () => ({ path: 'undici', namespace: 'undici-agent-only' }));
    b.onLoad({ filter: /.*/, namespace: 'undici-agent-only' }, () => ({
      contents: [
        "const Dispatcher = require('undici/lib/dispatcher/dispatcher.js');",
        "Object.assign(Dispatcher.prototype, require('undici/lib/api/index.js'));",
        "module.exports = { Agent: require('undici/lib/dispatcher/agent.js'), Dispatcher };",
      ].join('\n'),
      resolveDir: process.cwd(),
      loader: 'js',
    }));
  },
};

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
  plugins: [undiciAgentOnly],
  // CommonJS dependencies call require() for Node's own modules; ESM has none by default.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
});
