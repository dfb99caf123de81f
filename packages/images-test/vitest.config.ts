import { defineConfig } from 'vitest/config';

// The qemu boot test (test/boot.test.ts) takes 5-10 minutes of software emulation, so it is
// its own command, `npm run test:boot -w @cello/images-test`, rather than part of `npm test`.
const bootOnly = process.env.CELLO_BOOT_TEST === '1';

export default defineConfig({
  test: {
    include: bootOnly ? ['test/boot.test.ts'] : ['test/**/*.test.ts'],
    exclude: bootOnly ? [] : ['test/boot.test.ts'],
    // Each file builds or mounts large trees (bundles, a Debian rootfs): one at a time on a
    // 2-core machine shared with the other packages' tests.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 600_000,
    reporters: ['default', ['json', { outputFile: bootOnly ? '.test-results/boot.json' : '.test-results/vitest.json' }]],
  },
});
