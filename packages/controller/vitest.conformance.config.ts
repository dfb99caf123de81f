// `npm run conformance` (scripts/conformance.mjs) only: the upstream e2e suite against Cello's
// virtual node; hours at full scope, so never part of `vitest run` / `npm test`.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/conformance/*.suite.ts'],
    // The run's own budget (CONFORMANCE_TIMEOUT_MINUTES) bounds it; see the suite file.
    testTimeout: 24 * 3600_000,
    hookTimeout: 30 * 60_000,
    reporters: ['default'],
  },
});
