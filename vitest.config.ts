import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['actors/**/*.test.ts', 'src/**/*.test.ts', 'subjects/**/*.test.ts', 'test/**/*.test.ts'],
    // One embedded PostgreSQL for the whole run (test/support/postgres.ts gives each file its own database).
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
