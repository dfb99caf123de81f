import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each file builds or mounts large trees (bundles, a Debian rootfs): one at a time on a
    // 2-core machine shared with the other packages' tests.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 600_000,
    reporters: ['default', ['json', { outputFile: '.test-results/vitest.json' }]],
  },
});
