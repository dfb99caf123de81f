// `npm run critest` (scripts/critest.mjs) only: the whole critest suite against cello-cri; tens
// of minutes, so never part of `vitest run` / `npm test`.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/critest/*.suite.ts'],
    // The run's own budget (CRITEST_TIMEOUT_MINUTES) bounds it; see the suite file.
    testTimeout: 24 * 3600_000,
    hookTimeout: 30 * 60_000,
    reporters: ['default'],
  },
});
