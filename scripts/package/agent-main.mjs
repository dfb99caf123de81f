/* global CELLO_BUNDLE_VERSION -- replaced at bundle time (esbuild `define`) */
// Entry point of the agent bundle. It answers `--version` itself — the bundle's version is
// fixed when it is packaged, and the check proves the bundled runtime starts — then hands
// over to the agent's own CLI, which the packager aliases to packages/cell-agent/dist/cli.js.
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === '--version' || args[0] === '-V')) {
  // Replaced at bundle time (esbuild `define`).
  process.stdout.write(`${CELLO_BUNDLE_VERSION}\n`);
} else {
  await import('@cello/agent-cli');
}
